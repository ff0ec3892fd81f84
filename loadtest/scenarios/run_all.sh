#!/usr/bin/env bash
# Reproduces the tables of docs/performance.md: starts `degre serve` on a copy of the bundled
# model and runs a closed-loop concurrency sweep, an open-loop rate sweep until saturation,
# N in {20, 100, 200} at a fixed rate, the echo transport floor at that rate, and a
# hot-reload run that publishes a new version every few seconds under load.
#   DUR=10 RATE=500 loadtest/scenarios/run_all.sh        # results in loadtest/results/
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-loadtest/results}
DUR=${DUR:-10}                # seconds per run
RATE=${RATE:-}                # fixed rate for the N sweep; default: half the saturation
K=${K:-20}
GRPC=127.0.0.1:50061 METRICS=127.0.0.1:9106 ECHO=127.0.0.1:50062
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/swaps.txt

cargo build --release -p degre -p degre-loadtest --bins
DEGRE=target/release/degre
LOAD=target/release/degre-loadtest
REPO=$(mktemp -d)
cp -r models/degre "$REPO/"
MANIFEST="$REPO/degre/1/manifest.json"

"$DEGRE" serve --models "$REPO" --grpc-addr "$GRPC" --metrics-addr "$METRICS" \
  --poll-interval-ms 200 --log-format json 2>"$OUT/server.log" &
SERVER=$!
ECHO_PID=
trap 'kill $SERVER $ECHO_PID 2>/dev/null || true; rm -rf "$REPO"' EXIT
until (exec 3<>"/dev/tcp/${GRPC%:*}/${GRPC#*:}") 2>/dev/null; do sleep 0.2; done

load() { # label, then loadtest flags; D overrides the duration
  local label=$1; shift
  "$LOAD" run --addr "http://$GRPC" --manifest "$MANIFEST" --label "$label" \
    --json "$OUT/$label.json" --duration-s "${D:-$DUR}" --top-k "$K" "$@"
}

# Warm-up: the server compiles an encoder plan per N it sees.
for n in 20 100 200; do D=2 load warmup-n$n --mode closed --concurrency 2 --candidates $n >/dev/null; done

echo "== closed loop: saturation (N=100, K=$K)"
for c in 1 2 4 8 16 32; do load closed-c$c --mode closed --concurrency $c --candidates 100; done

echo "== open loop: rate sweep until saturation (N=100, K=$K)"
for r in 250 500 1000 1500 2000 3000 4000 6000; do
  load open-r$r --mode open --rate $r --candidates 100
  # Saturated: under 95% of the target rate served, or any error.
  if python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['achieved_rate'] < 0.95*r['target_rate'] or r['errors'] > 0 else 1)" "$OUT/open-r$r.json"; then
    break
  fi
done

SAT=$(python3 -c "import json,glob; print(int(max(json.load(open(f))['achieved_rate'] for f in glob.glob('$OUT/closed-c*.json'))))")
RATE=${RATE:-$((SAT / 2))}
echo "== fixed rate $RATE/s (half of the closed-loop saturation $SAT/s): N sweep"
scrape() { python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "http://$METRICS/metrics" >"$1"; }
for n in 20 100 200; do
  scrape "$OUT/metrics-before-n$n.txt"
  load open-n$n --mode open --rate "$RATE" --candidates $n
  scrape "$OUT/metrics-after-n$n.txt"
done

echo "== echo transport floor at $RATE/s (N=100)"
"$LOAD" echo-server --addr "$ECHO" 2>/dev/null &
ECHO_PID=$!
until (exec 3<>"/dev/tcp/${ECHO%:*}/${ECHO#*:}") 2>/dev/null; do sleep 0.2; done
"$LOAD" run --addr "http://$ECHO" --manifest "$MANIFEST" --label echo-n100 --json "$OUT/echo-n100.json" \
  --duration-s "$DUR" --top-k "$K" --mode open --rate "$RATE" --candidates 100

echo "== hot reload: a new version every 5 s under $RATE/s (N=100)"
HOT=30
D=$HOT load hot-reload --mode open --rate "$RATE" --candidates 100 &
LOAD_PID=$!
START=$(date +%s.%N)
for i in 1 2 3 4 5; do
  sleep 5
  STAGE=$(mktemp -d)
  "$DEGRE" export --out "$STAGE" --seed $((100 + i)) >/dev/null
  "$DEGRE" publish --from "$STAGE" --models "$REPO" >/dev/null
  python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$START" >>"$OUT/swaps.txt"
  rm -rf "$STAGE"
done
wait $LOAD_PID

python3 loadtest/scenarios/summarize.py "$OUT" | tee "$OUT/summary.md"
