#!/usr/bin/env bash
# Checks the deployment artefacts as far as a machine without Docker or Kubernetes
# can: every YAML file under deploy/ and examples/ parses; the Kubernetes objects
# validate strictly against the Kubernetes schemas (kubernetes-validate) and their
# cross-references resolve (scripts/check-deploy-refs.py); the compose files
# validate against the Compose spec's schema; every cemesh manifest in
# them (plain files, and Broker/Trigger documents inside ConfigMaps) passes
# `cemesh validate`, with the server config that sits beside it; the Dockerfile's
# build command is the one run here (CHECK_DEPLOY_SKIP_BUILD=1 skips that step, a
# release build).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
pip_install() {
  echo "==> installing $* (PyPI)"
  python3 -m pip install --quiet --user "$@" 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages "$@"
}
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
export PATH="$(python3 -m site --user-base)/bin:$PATH"
command -v kubernetes-validate >/dev/null || pip_install kubernetes-validate
command -v check-jsonschema >/dev/null || pip_install check-jsonschema

bin="${CEMESH_BIN:-target/debug/cemesh}"
if [[ -z "${CEMESH_BIN:-}" ]]; then
  cargo build --quiet --locked -p cemesh-broker --bin cemesh
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "==> YAML parses; cemesh manifests extracted"
python3 - "$work" <<'PY'
import pathlib, sys, yaml

work = pathlib.Path(sys.argv[1])
KNATIVE = ("eventing.knative.dev/", "messaging.knative.dev/", "flows.knative.dev/",
           "sources.knative.dev/")
SERVER_KEYS = {"channel", "services", "service_url_template", "config_dir", "data_dir",
               "ingress_addr", "admin_addr", "max_body_size", "log_format", "log_level",
               "shutdown_grace"}

def is_manifest(doc):
    if not (isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(KNATIVE)):
        return False
    # A sidecar's trigger template: `cemesh sidecar` fills in the subscriber when it
    # registers it, so it is not a complete manifest on its own.
    if doc.get("kind") == "Trigger" and not (doc.get("spec") or {}).get("subscriber"):
        return False
    return True

def is_server_config(name, doc):
    return name in ("server.yaml", "server.yml") and (doc is None or isinstance(doc, dict))

failed = False
units = {}  # directory -> {"manifests": [texts], "server": text or None}
files = sorted(p for root in ("deploy", "examples") for p in pathlib.Path(root).rglob("*")
               if p.suffix in (".yaml", ".yml") and p.is_file())
for path in files:
    text = path.read_text()
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        print(f"{path}: {e}")
        failed = True
        continue
    # One unit per example (manifests may sit in subfolders, e.g. a sidecar's
    # triggers beside its mesh); in deploy/, a folder, with its config/ subfolder.
    if path.parts[0] == "examples":
        unit_dir = pathlib.Path(*path.parts[:2])
    else:
        unit_dir = path.parent.parent if path.parent.name == "config" else path.parent
    unit = units.setdefault(str(unit_dir), {"manifests": [], "server": None})
    if is_server_config(path.name, docs[0] if docs else None) and not any(is_manifest(d) for d in docs):
        unit["server"] = (str(path), text)
        continue
    for i, doc in enumerate(docs):
        if is_manifest(doc):
            unit["manifests"].append((f"{path} document {i + 1}", yaml.safe_dump(doc)))
        elif isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                where = f"{path} ConfigMap {doc.get('metadata', {}).get('name')} key {key}"
                try:
                    inner = list(yaml.safe_load_all(value))
                except yaml.YAMLError as e:
                    print(f"{where}: {e}")
                    failed = True
                    continue
                if key in ("server.yaml", "server.yml"):
                    unit["server"] = (where, value)
                for j, d in enumerate(inner):
                    if is_manifest(d):
                        unit["manifests"].append((f"{where} document {j + 1}", yaml.safe_dump(d)))

n = 0
for k, (unit_dir, unit) in enumerate(sorted(units.items())):
    if not unit["manifests"]:
        continue
    d = work / f"unit{k}"
    (d / "manifests").mkdir(parents=True)
    sources = []
    for m, (where, text) in enumerate(unit["manifests"]):
        (d / "manifests" / f"{m:03}.yaml").write_text(text)
        sources.append(f"{m:03}.yaml = {where}")
        n += 1
    (d / "sources.txt").write_text("\n".join(sources) + "\n")
    (d / "dir.txt").write_text(unit_dir + "\n")
    if unit["server"]:
        where, text = unit["server"]
        (d / "server.yaml").write_text(text)
        (d / "server-source.txt").write_text(where + "\n")
print(f"{len(files)} YAML files parse; {n} cemesh manifests found")
sys.exit(1 if failed else 0)
PY

echo "==> Kubernetes schemas (strict) and cross-references"
mapfile -t k8s < <(find deploy/k8s deploy/keda -name '*.yaml' ! -name kustomization.yaml | sort)
# CRDs (KEDA's ScaledObject) have no built-in schema: reported as a warning, skipped.
kubernetes-validate --strict --quiet --no-warn "${k8s[@]}"
python3 scripts/check-deploy-refs.py deploy

echo "==> compose files (Compose spec schema)"
check-jsonschema --builtin-schema vendor.compose-spec $(find deploy -name 'compose.yaml' | sort)

echo "==> cemesh validate"
status=0
for unit in "$work"/unit*; do
  [[ -d "$unit" ]] || continue
  dir="$(cat "$unit/dir.txt")"
  args=(validate "$unit/manifests")
  if [[ -f "$unit/server.yaml" ]]; then
    args+=(--config "$unit/server.yaml")
  fi
  # Relative paths in a server config (an example's config_dir) are the repo's.
  if out="$("$bin" "${args[@]}" 2>&1)"; then
    echo "$dir: $out"
  else
    echo "$dir: INVALID" >&2
    echo "$out" >&2
    sed 's/^/  /' "$unit/sources.txt" >&2
    status=1
  fi
done

echo "==> deploy/Dockerfile build command"
build_cmd="$(python3 - <<'PY'
import re
text = open("deploy/Dockerfile").read().replace("\\\n", " ")
for line in text.splitlines():
    line = line.strip()
    if line.startswith("RUN") and "cargo build" in line:
        cmd = line[3:]
        cmd = re.sub(r"--mount=\S+", "", cmd)
        print(re.search(r"cargo build[^&;]*", cmd).group(0).strip())
        break
PY
)"
[[ -n "$build_cmd" ]] || { echo "no cargo build in deploy/Dockerfile" >&2; exit 1; }
for src in $(sed -n 's/^COPY \([^-][^ ]*\) .*/\1/p' deploy/Dockerfile | grep -v -- '--from'); do
  [[ -e "$src" ]] || { echo "deploy/Dockerfile copies $src, which does not exist" >&2; status=1; }
done
if [[ "${CHECK_DEPLOY_SKIP_BUILD:-0}" == 1 ]]; then
  echo "skipped (CHECK_DEPLOY_SKIP_BUILD=1): $build_cmd"
else
  echo "$build_cmd"
  $build_cmd
fi
exit "$status"
