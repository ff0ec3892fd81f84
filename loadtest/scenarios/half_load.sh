#!/usr/bin/env bash
# The half-load table of docs/performance.md: `degre serve` on core 0, an open loop at RATE
# from core 1, and the server's own latency histogram (warm-up subtracted), the admission
# refusals, the client's latency, and what core 0 did (`/proc/stat`); then the echo server
# at the same rate for comparison.
#   RATE=3500 N=100 K=20 loadtest/scenarios/half_load.sh   # SERVE_ARGS="--max-queue-ms 100" adds flags
#   DEGRE=/tmp/degre-before ... serves another build of degre, for a before/after pair
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-3500} N=${N:-100} K=${K:-20} DUR=${DUR:-10}
ADDR=127.0.0.1:50091 METRICS=127.0.0.1:9191
OUT=${OUT:-loadtest/results/half-load}
mkdir -p "$OUT"
cargo build --release -p degre -p degre-loadtest --bins
LOAD=target/release/degre-loadtest
DEGRE=${DEGRE:-target/release/degre}

run() { # label, then loadtest flags
  local label=$1; shift
  taskset -c 1 "$LOAD" run --addr "http://$ADDR" --manifest models/degre/1/manifest.json \
    --label "$label" --json "$OUT/$label.json" --top-k "$K" --candidates "$N" \
    --connections 8 "$@" >/dev/null 2>&1
}
serve() {
  taskset -c 0 "$@" >/dev/null 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  until (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}") 2>/dev/null; do sleep 0.2; done
  run warmup --duration-s 2 --mode closed --concurrency 2
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; trap - EXIT; }

serve "$DEGRE" serve --grpc-addr "$ADDR" --metrics-addr "$METRICS" \
  --models models --log-format json ${SERVE_ARGS:-}
curl -s "$METRICS/metrics" > "$OUT/before.prom"
grep '^cpu0 ' /proc/stat > "$OUT/before.stat"
run "degre-r$RATE" --duration-s "$DUR" --mode open --rate "$RATE"
curl -s "$METRICS/metrics" > "$OUT/after.prom"
grep '^cpu0 ' /proc/stat > "$OUT/after.stat"
stop
serve "$LOAD" echo-server --addr "$ADDR"
run "echo-r$RATE" --duration-s "$DUR" --mode open --rate "$RATE"
stop

python3 - "$OUT" "$RATE" <<'PY'
import json, re, sys
out, rate = sys.argv[1], sys.argv[2]
def buckets(path):
    b = {}
    for line in open(path):
        m = re.match(r'degre_request_duration_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m:
            b[m.group(1)] = b.get(m.group(1), 0) + float(m.group(2))
    return b
def refused(path):
    return sum(float(l.split()[-1]) for l in open(path)
               if l.startswith("degre_requests_total") and 'code="RESOURCE_EXHAUSTED"' in l)
a, b = buckets(f"{out}/before.prom"), buckets(f"{out}/after.prom")
total = b["+Inf"] - a.get("+Inf", 0)
shares = "  ".join(f"<= {float(le) * 1e3:g} ms {100 * (b[le] - a.get(le, 0)) / total:.2f}%"
                   for le in ["0.0005", "0.001", "0.002", "0.005"] if le in b)
print(f"degre server-side, {total:.0f} requests: {shares}")
print(f"RESOURCE_EXHAUSTED (admission or the compute queue's limit): {refused(f'{out}/after.prom') - refused(f'{out}/before.prom'):.0f}")
t0 = [int(v) for v in open(f"{out}/before.stat").read().split()[1:]]
t1 = [int(v) for v in open(f"{out}/after.stat").read().split()[1:]]
d = [y - x for x, y in zip(t0, t1)]
print("core 0: busy %.1f%%, steal %.2f%%" % (100 * (1 - d[3] / sum(d)), 100 * d[7] / sum(d)))
for label in ["degre", "echo"]:
    r = json.load(open(f"{out}/{label}-r{rate}.json"))
    l = r["latency"]
    print(f"{label} client: ok/s {r['achieved_rate']:.0f}  p50 {l['p50_ms']:.3f}  p99 {l['p99_ms']:.3f}  "
          f"p99.9 {l['p999_ms']:.3f}  max {l['max_ms']:.3f} ms  errors {r['errors']}")
PY
