#!/usr/bin/env bash
# The one-core comparison of docs/performance.md: a server pinned to core 0 and the load
# generator to core 1, closed loops of 1, 8 and 16 outstanding requests, for `degre serve`
# on the bundled model and for the echo transport floor, in one run: ok/s, latency and the
# server's CPU per request of each, then the ratios to the echo floor.
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

# The server's CPU time so far (user + system), in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

summary() { # report, server CPU ticks spent during the run: adds `server_cpu_us` to it
  python3 - "$1" "$2" "$(getconf CLK_TCK)" <<'PY'
import json, sys
path = sys.argv[1]
r = json.load(open(path))
r["server_cpu_us"] = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / max(r["ok"], 1)
json.dump(r, open(path, "w"), indent=1)
l = r["latency"]
print(f"{r['label']:>24}  ok/s {r['achieved_rate']:8.0f}  server CPU {r['server_cpu_us']:6.1f} us/request  p50 {l['p50_ms']:.3f} ms  p99 {l['p99_ms']:.3f} ms  errors {r['errors']}")
PY
}

# Against the echo floor: each server's best closed loop (the issue's measure), the
# closed loops of 16, and the CPU a request costs at each one's best.
ratios() {
  python3 - "$OUT" "$@" <<'PY'
import json, sys
out, labels = sys.argv[1], sys.argv[2:]
runs = {l: [json.load(open(f"{out}/{l}-c{c}.json")) for c in (1, 8, 16)] for l in labels}
best = {l: max(rs, key=lambda r: r["achieved_rate"]) for l, rs in runs.items()}
echo = best["echo"]
for l in (l for l in labels if l != "echo"):
    b = best[l]
    print(f"{l} / echo: best {b['achieved_rate']:.0f} (c{b['concurrency']}) / {echo['achieved_rate']:.0f} "
          f"(c{echo['concurrency']}) = {b['achieved_rate'] / echo['achieved_rate']:.2f}; "
          f"c16 {runs[l][2]['achieved_rate'] / runs['echo'][2]['achieved_rate']:.2f}; "
          f"CPU per request {echo['server_cpu_us']:.0f} / {b['server_cpu_us']:.0f} us = "
          f"{echo['server_cpu_us'] / b['server_cpu_us']:.2f}")
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
  measured() { # name, then loadtest flags
    local before; before=$(ticks $server)
    run "$@"
    summary "$OUT/$1.json" $(( $(ticks $server) - before ))
  }
  for c in 1 8 16; do measured "$label-c$c" --mode closed --concurrency $c; done
  if [ -n "$RATE" ]; then measured "$label-r$RATE" --mode open --rate "$RATE"; fi
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
ratios ${BEFORE:+before} degre echo
