#!/usr/bin/env python3
"""Fails when the modules of any crate import each other in a cycle.

Dependencies between crates flow one way (cargo refuses cycles there); inside a
crate nothing stops two files from using each other, so this reads every
`crate::`/`super::` path in each crate's `src/` (test modules left out), builds the
graph of file modules, and reports every strongly connected component. A module
may use its ancestors (that is nesting, not a cycle).

    python3 scripts/check-module-cycles.py [ROOT]
"""
import os
import re
import sys

PATH = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
# `use super::{a, b::C}` and `use crate::{...}` groups.
GROUP = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")
COMMENT = re.compile(r"(?m)^\s*//.*$|\s//\s.*$")
TESTS = re.compile(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{")


def module_of(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def paths_in(text):
    for m in GROUP.finditer(text):
        for item in m.group(2).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                yield m.group(1) + "::" + item
            elif item == "self":
                yield m.group(1)
    yield from PATH.findall(text)


def resolve(module, is_dir_module, path, modules):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    else:
        base = list(module)
        # In a file module `a/b.rs`, `super` is `a`; in `a/b/mod.rs` it is also `a`.
        rest = parts
        while rest and rest[0] == "super":
            base = base[:-1]
            rest = rest[1:]
    for i in range(len(rest), 0, -1):
        cand = tuple(base + rest[:i])
        if cand in modules:
            return cand
    return None


def graph(src):
    files = [
        os.path.join(d, f)
        for d, _, fs in os.walk(src)
        for f in fs
        if f.endswith(".rs")
    ]
    modules = {module_of(src, f): f for f in files}
    edges = {m: set() for m in modules}
    for m, f in modules.items():
        with open(f, encoding="utf-8") as fh:
            text = fh.read()
        cut = TESTS.search(text)
        if cut:
            text = text[: cut.start()]
        # Comments (doc links included) mention modules without using them.
        text = COMMENT.sub("", text)
        is_dir = f.endswith(("mod.rs", "lib.rs", "main.rs"))
        for p in paths_in(text):
            target = resolve(m, is_dir, p, modules)
            if target is None or target == m or m[: len(target)] == target:
                continue  # itself, or an ancestor
            edges[m].add(target)
    return edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(100000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    found = 0
    for crate in sorted(os.listdir(root)):
        src = os.path.join(root, crate, "src")
        if not os.path.isfile(os.path.join(root, crate, "Cargo.toml")) or not os.path.isdir(src):
            continue
        for comp in cycles(graph(src)):
            found += 1
            names = ", ".join("::".join(m) or "(root)" for m in comp)
            print(f"{crate}: modules import each other: {names}")
    if found:
        print(f"{found} import cycle(s); move what both sides share into a lower module")
        return 1
    print("no import cycles between modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
