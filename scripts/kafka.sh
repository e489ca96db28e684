#!/usr/bin/env bash
# A Kafka-protocol server for cemesh's Kafka tests: tansu (a Kafka-compatible broker
# written in Rust, from crates.io) with in-memory storage, on 127.0.0.1.
#
#   scripts/kafka.sh install        install tansu into the cargo bin dir if missing
#                                   (cold: about 14 minutes on 2 cores; cached after)
#   scripts/kafka.sh start [PORT]   install if needed, start tansu in the background on
#                                   PORT (default: a free one), wait until it answers,
#                                   print HOST:PORT on stdout; its pid goes to
#                                   $CEMESH_KAFKA_PIDFILE when that is set
#   scripts/kafka.sh stop PID       stop a server started by `start`
#
# scripts/test.sh uses it when CEMESH_TEST_KAFKA is not set:
#   export CEMESH_TEST_KAFKA="$(scripts/kafka.sh start)"
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

tansu_bin() {
  if [ -n "${CEMESH_TANSU:-}" ]; then echo "$CEMESH_TANSU"; return; fi
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  echo "$CARGO_BIN/tansu"
}

install() {
  local bin; bin="$(tansu_bin)"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "==> installing tansu $TANSU_VERSION into $CARGO_BIN (about 14 minutes the first time)" >&2
  # `dynostore` is the feature behind the memory:// storage engine. --locked keeps the
  # dependency versions tansu was released with. Its build needs only a C compiler
  # (aws-lc-sys, ring): no cmake, no system packages beyond build-essential.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore >&2
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $(( 20000 + RANDOM % 20000 ))
}

start() {
  install
  local bin port log pid
  bin="$(tansu_bin)"
  port="${1:-$(free_port)}"
  log="${TMPDIR:-/tmp}/cemesh-tansu-$port.log"
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "127.0.0.1:$port"
      if [ -n "${CEMESH_KAFKA_PIDFILE:-}" ]; then echo "$pid" >"$CEMESH_KAFKA_PIDFILE"; fi
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "tansu exited; its log ($log):" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "tansu did not listen on 127.0.0.1:$port within 30 s; log: $log" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) kill "${2:?pid}" 2>/dev/null || true ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
