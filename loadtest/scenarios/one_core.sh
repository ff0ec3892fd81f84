#!/usr/bin/env bash
# The one-core comparison of docs/performance.md: a server pinned to core 0 and the load
# generator to core 1, closed loops of 1, 8 and 16 outstanding requests, for `degre serve`
# on the bundled model and for the echo transport floor, in one run.
#   N=100 K=20 DUR=8 loadtest/scenarios/one_core.sh        # env BEFORE=path/to/old/degre adds a row
#   (served from BEFORE_MODELS, default models: an old binary, or an old model, or both)
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100} K=${K:-20} DUR=${DUR:-8} RATE=${RATE:-}
OUT=${OUT:-loadtest/results/one-core}
ADDR=127.0.0.1:50081
mkdir -p "$OUT"
cargo build --release -p degre -p degre-loadtest --bins
LOAD=target/release/degre-loadtest
MANIFEST=models/degre/1/manifest.json

summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
print(f"{r['label']:>24}  ok/s {r['achieved_rate']:8.0f}  p50 {l['p50_ms']:.3f} ms  p99 {l['p99_ms']:.3f} ms  errors {r['errors']}")
PY
}

measure() { # label, then the server command
  local label=$1; shift
  taskset -c 0 "$@" >/dev/null 2>&1 &
  local server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  until (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}") 2>/dev/null; do sleep 0.2; done
  run() { # name, then loadtest flags
    local name=$1; shift
    taskset -c 1 "$LOAD" run --addr "http://$ADDR" --manifest "$MANIFEST" --label "$name" \
      --json "$OUT/$name.json" --duration-s "${D:-$DUR}" --top-k "$K" --candidates "$N" \
      --connections 8 "$@" >/dev/null
  }
  D=2 run "$label-warmup" --mode closed --concurrency 2
  for c in 1 8 16; do run "$label-c$c" --mode closed --concurrency $c; summary "$OUT/$label-c$c.json"; done
  if [ -n "$RATE" ]; then run "$label-r$RATE" --mode open --rate "$RATE"; summary "$OUT/$label-r$RATE.json"; fi
  kill $server; wait $server 2>/dev/null || true
  trap - EXIT
}

echo "N=$N K=$K, $(lscpu | sed -n 's/^Model name: *//p')"
SERVE=(serve --grpc-addr "$ADDR" --metrics-addr 127.0.0.1:9181 --log-format json)
if [ -n "${BEFORE:-}" ]; then
  measure before "$BEFORE" "${SERVE[@]}" --models "${BEFORE_MODELS:-models}"
fi
measure degre target/release/degre "${SERVE[@]}" --models models
measure echo "$LOAD" echo-server --addr "$ADDR"
