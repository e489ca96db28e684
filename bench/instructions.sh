#!/usr/bin/env bash
# Instructions the broker executes per event, counted by valgrind's callgrind: the
# same for the same binary and load whatever else the machine is doing, so a change
# of a few percent shows where timed runs on a shared 2-core machine cannot.
#
#   bench/instructions.sh BIN [EVENTS] [TRIGGERS] [CHANNEL]
#
# Runs `BIN serve` (CHANNEL: memory, the default, or sled) under callgrind on fixed local ports, points
# `BIN bench` at it as a deployed broker (`--target-url`) at 500 events/s, zeroes the
# counts after a warm-up and dumps them after EVENTS events. Prints the total and the
# per-event instructions, and leaves the profile in $OUT (default
# /tmp/cemesh-instructions) for `callgrind_annotate --inclusive=yes`. Needs valgrind.
set -euo pipefail
bin="$(realpath "$1")"
events="${2:-3000}"
triggers="${3:-1}"
channel="${4:-memory}"
out="${OUT:-/tmp/cemesh-instructions}"
sink=127.0.0.1:18099 ingress=127.0.0.1:18098 admin=127.0.0.1:18097 grpc=127.0.0.1:18096
rm -rf "$out" && mkdir -p "$out/config" "$out/data"
"$bin" bench --print-manifests --sink-addr "$sink" --triggers "$triggers" --channel "$channel" >"$out/config/bench.yaml"
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" --dump-instr=no \
  "$bin" serve --config-dir "$out/config" --data-dir "$out/data" --channel "$channel" \
  --ingress-addr "$ingress" --admin-addr "$admin" --grpc-addr "$grpc" >"$out/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -fs -o /dev/null "http://$admin/readyz" && break
  sleep 1
done
run() {
  "$bin" bench --target-url "http://$ingress/default/bench" --sink-addr "$sink" \
    --triggers "$triggers" --target-pid "$pid" --rate 500 --events "$1"
}
run 400 >"$out/warm.txt" 2>&1
callgrind_control -z "$pid" >/dev/null 2>&1
run "$events" >"$out/bench.txt" 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
grep -q "lost 0" "$out/bench.txt" || { cat "$out/bench.txt" >&2; exit 1; }
total=$(callgrind_annotate "$out/callgrind.out.1" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions: $total in all, $((total / events)) per event ($events events, $triggers trigger(s), $channel)"
