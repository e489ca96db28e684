#!/usr/bin/env bash
# The project's one test command: formatting, lints, one build, every test from it.
# Installs whatever the tests need that a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (debug, all targets)"
cargo build --workspace --all-targets --locked
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads "${CEMESH_TEST_THREADS:-4}"
