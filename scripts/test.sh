#!/usr/bin/env bash
# The project's one test command: formatting, module cycles, lints (default and all
# features), one build with every feature, every test from that build. Installs what
# the tests need that a fresh machine lacks: Debian's pkg-config and libssl-dev
# (librdkafka's build) and strace (the test that a 202 follows its fsync), PyYAML
# (deploy checks), the standardwebhooks reference verifier, the official CloudEvents
# SDK, Debian's chromium and chromium-driver with Selenium (the dashboard's
# real-browser test) and a Kafka-protocol server (tansu, cached in the cargo bin dir).
#
#   CEMESH_TEST_KAFKA=HOST:PORT   use this Kafka instead of starting tansu
#   CEMESH_TEST_THREADS=N         parallel tests per binary (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
# One build per run: incremental data would only grow the cached target dir (38 GB
# after a few weeks of runs on one machine) without making a run faster.
export CARGO_INCREMENTAL=0

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v make >/dev/null || missing+=(make)
# tests/tests/e2e/fsync.rs traces the broker's syscalls.
command -v strace >/dev/null || missing+=(strace)
# tests/tests/e2e/tls.rs publishes with curl --cacert.
command -v curl >/dev/null || missing+=(curl)
# tests/tests/e2e/dashboard.rs drives the dashboard in headless Chromium.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The Python packages below (and the deploy checks') come from PyPI through pip.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# tests/tests/e2e/auth.rs checks webhook signatures with the reference verifier;
# tests/tests/e2e/tls.rs publishes with the official CloudEvents SDK over https.
py_missing=()
python3 -c 'import standardwebhooks' 2>/dev/null || py_missing+=(standardwebhooks)
python3 -c 'import cloudevents, requests' 2>/dev/null || py_missing+=(cloudevents requests)
python3 -c 'import selenium' 2>/dev/null || py_missing+=(selenium)
if ((${#py_missing[@]})); then
  echo "==> installing Python packages: ${py_missing[*]}"
  python3 -m pip install --quiet --user "${py_missing[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages "${py_missing[@]}"
fi

# Absolute: the end-to-end tests run with their crate as the working directory.
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> module import cycles"
python3 scripts/check-module-cycles.py
echo "==> cargo clippy (default features, as the quickstart builds)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo clippy (all features)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "==> cargo build (debug, all targets, all features)"
cargo build --workspace --all-targets --all-features --locked
# The end-to-end tests run this binary: the one just built, with every feature.
export CEMESH_BIN="$target/debug/cemesh"

echo "==> deploy artefacts"
CHECK_DEPLOY_SKIP_BUILD=1 bash scripts/check-deploy.sh

if [ -z "${CEMESH_TEST_KAFKA:-}" ]; then
  echo "==> Kafka for the tests (tansu)"
  bash scripts/kafka.sh install
  CEMESH_KAFKA_PIDFILE="$(mktemp)"
  export CEMESH_KAFKA_PIDFILE
  CEMESH_TEST_KAFKA="$(bash scripts/kafka.sh start)"
  export CEMESH_TEST_KAFKA
  trap 'bash scripts/kafka.sh stop "$(cat "$CEMESH_KAFKA_PIDFILE")" || true' EXIT
fi

echo "==> cargo test (all features)"
cargo test --workspace --all-features --locked --no-fail-fast -- --test-threads "${CEMESH_TEST_THREADS:-4}"

# The vendored mimalloc crate is outside the workspace (it needs `unsafe`): its own
# tests, including the alignment test of cemesh's patch (vendor/mimalloc/CEMESH-PATCH.md).
echo "==> cargo test (vendor/mimalloc)"
cargo test --locked --manifest-path vendor/mimalloc/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}/vendor-mimalloc"
