#!/usr/bin/env python3
"""Resolves the cross-references of the Kubernetes files under deploy/ offline.

Schema validation (kubernetes-validate) says each object is well formed; this says
they fit together, as a cluster would find out at run time:
- a workload's selector matches its pod template's labels;
- a Service's selector matches a workload in its namespace, and each named
  targetPort is a port of that workload's containers;
- a PodDisruptionBudget selects a workload;
- a configMap or secret volume names an object defined beside it, or one the
  file's header says to create (`kubectl create configmap NAME`);
- every URL or HOST:PORT in a container's env or a KEDA trigger that names one of
  our Services (NAME, NAME.NS, NAME.NS.svc[.cluster.local]) uses its namespace and
  one of its ports;
- a KEDA ScaledObject scales a Deployment that exists in its namespace.

    python3 scripts/check-deploy-refs.py [deploy]
"""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy")
problems = []
objects = []  # (path, namespace, doc, created-by-comment names)


def unit_namespace(path):
    for parent in [path.parent, *path.parents]:
        k = parent / "kustomization.yaml"
        if k.exists():
            return (yaml.safe_load(k.read_text()) or {}).get("namespace")
        if parent == root:
            break
    return None


for path in sorted(p for p in root.rglob("*.y*ml") if p.parent.name != "config"):
    if "compose" in path.parts:
        continue
    text = path.read_text()
    created = set(re.findall(r"kubectl create (?:configmap|secret \w+) ([a-z0-9-]+)", text))
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or "kind" not in doc or doc["kind"] == "Kustomization":
            continue
        if str(doc.get("apiVersion", "")).startswith(("eventing.knative.dev", "messaging.knative.dev")):
            continue
        ns = unit_namespace(path) or doc.get("metadata", {}).get("namespace") or "default"
        objects.append((path, ns, doc, created))

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def name(doc):
    return doc.get("metadata", {}).get("name")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


workloads = [(p, ns, d) for p, ns, d, _ in objects if d["kind"] in WORKLOADS]
services = {}
for p, ns, d, _ in objects:
    if d["kind"] == "Service":
        services[(ns, name(d))] = (p, d)
defined = {(d["kind"], ns, name(d)) for _, ns, d, _ in objects}


def template_labels(d):
    return d["spec"]["template"].get("metadata", {}).get("labels", {})


def container_ports(d):
    return {
        port.get("name")
        for c in d["spec"]["template"]["spec"].get("containers", [])
        for port in c.get("ports", [])
    }


for p, ns, d in workloads:
    sel = d["spec"].get("selector", {}).get("matchLabels", {})
    if not matches(sel, template_labels(d)):
        problems.append(f"{p}: {d['kind']} {name(d)}: selector {sel} does not match its template's labels")

for (ns, svc), (p, d) in services.items():
    sel = d["spec"].get("selector", {})
    targets = [w for w in workloads if w[1] == ns and matches(sel, template_labels(w[2]))]
    if not targets:
        problems.append(f"{p}: Service {svc}: selector {sel} matches no workload in namespace {ns}")
        continue
    for port in d["spec"].get("ports", []):
        tp = port.get("targetPort")
        if isinstance(tp, str) and not any(tp in container_ports(w[2]) for w in targets):
            problems.append(f"{p}: Service {svc}: targetPort {tp!r} is no container port of {[name(w[2]) for w in targets]}")

for p, ns, d, _ in objects:
    if d["kind"] == "PodDisruptionBudget":
        sel = d["spec"].get("selector", {}).get("matchLabels", {})
        if not any(w[1] == ns and matches(sel, template_labels(w[2])) for w in workloads):
            problems.append(f"{p}: PodDisruptionBudget {name(d)}: selector {sel} matches no workload")

for p, ns, d, created in objects:
    if d["kind"] not in WORKLOADS:
        continue
    for vol in d["spec"]["template"]["spec"].get("volumes", []):
        for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if key in vol:
                ref = vol[key].get("name") or vol[key].get("secretName")
                if (kind, ns, ref) not in defined and ref not in created:
                    problems.append(f"{p}: {d['kind']} {name(d)}: volume {vol['name']} uses {kind} {ref}, defined nowhere")

HOST = re.compile(r"^(?:[a-z]+://)?([a-z0-9.$()_-]+?)(?::(\d+))?(?:/.*)?$")


def check_address(where, value, own_ns, default_port):
    m = HOST.match(value.strip())
    if not m:
        return
    host, port = m.group(1), m.group(2)
    parts = host.split(".")
    svc = parts[0]
    if len(parts) == 1:
        ns = own_ns
    elif len(parts) >= 2 and (len(parts) == 2 or parts[2] == "svc"):
        ns = own_ns if parts[1].startswith("$(") else parts[1]
    else:
        return  # not a cluster Service name
    candidates = [k for k in services if k[1] == svc]
    if not candidates:
        return  # not one of ours (e.g. prometheus-server.monitoring)
    if (ns, svc) not in services:
        problems.append(f"{where}: {value!r}: Service {svc} is in namespace {candidates[0][0]}, not {ns}")
        return
    ports = {str(pp.get("port")) for pp in services[(ns, svc)][1]["spec"].get("ports", [])}
    port = port or default_port
    if port is None:
        return
    if port not in ports:
        problems.append(f"{where}: {value!r}: Service {ns}/{svc} has ports {sorted(ports)}, not {port}")


for p, ns, d, _ in objects:
    if d["kind"] in WORKLOADS:
        for c in d["spec"]["template"]["spec"].get("containers", []):
            for env in c.get("env", []):
                v = env.get("value")
                if isinstance(v, str) and ("://" in v or re.match(r"^[a-z0-9.-]+:\d+$", v)):
                    default = "80" if v.startswith("http://") else "443" if v.startswith("https://") else None
                    check_address(f"{p}: {name(d)} env {env['name']}", v, ns, default)
    if d["kind"] == "ScaledObject":
        target = d["spec"]["scaleTargetRef"]["name"]
        if not any(w[1] == ns and name(w[2]) == target for w in workloads):
            problems.append(f"{p}: ScaledObject {name(d)}: scales {ns}/{target}, which is defined nowhere")
        for t in d["spec"].get("triggers", []):
            for key in ("url", "scalerAddress", "serverAddress"):
                v = t.get("metadata", {}).get(key)
                if v:
                    default = "80" if v.startswith("http://") else None
                    check_address(f"{p}: ScaledObject {name(d)} {key}", v, ns, default)

for line in problems:
    print(line)
print(f"{len(objects)} Kubernetes objects, {len(problems)} broken reference(s)")
sys.exit(1 if problems else 0)
