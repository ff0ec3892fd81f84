"""Markdown tables from the JSON reports of run_all.sh: python3 summarize.py RESULTS_DIR"""
import glob
import json
import os
import sys

out = sys.argv[1]


def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)


def rows(pattern, key):
    reports = [json.load(open(f)) for f in glob.glob(os.path.join(out, pattern))]
    return sorted(reports, key=key)


def line(r, first):
    l = r["latency"]
    return (f"| {first} | {r['achieved_rate']:.0f} | {l['p50_ms']:.3f} | {l['p90_ms']:.3f} | "
            f"{l['p99_ms']:.3f} | {l['p999_ms']:.3f} | {l['max_ms']:.3f} | {r['errors']} |")


HEAD = "| ok/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |\n|---|---|---|---|---|---|---|---|"

print("### Closed loop (N=100): saturation\n")
print("| concurrency " + HEAD)
for r in rows("closed-c*.json", lambda r: r["concurrency"]):
    print(line(r, r["concurrency"]))

print("\n### Open loop rate sweep (N=100), latency from the due time\n")
print("| target/s " + HEAD)
for r in rows("open-r*.json", lambda r: r["target_rate"]):
    print(line(r, f"{r['target_rate']:.0f}"))

print("\n### Fixed rate: candidates per request, and the echo transport floor\n")
print("| run " + HEAD)
for r in rows("open-n*.json", lambda r: r["candidates"]) + rows("echo-*.json", lambda r: 0):
    print(line(r, f"{r['label']} @ {r['target_rate']:.0f}/s"))

def buckets(path, metric):
    """Cumulative bucket counts {le: count} of one histogram in a /metrics scrape."""
    out = {}
    for line in open(path):
        if line.startswith(metric + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(q, before, after):
    """histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    rank, prev_le, prev_count = q * counts[-1], 0.0, 0.0
    for le, count in zip(les, counts):
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return les[-1]


print("\n### Server-side latency at the fixed rate (the server's own histograms)\n")
print("| N | request p50 ms | request p99 ms | compute p50 ms | compute p99 ms |")
print("|---|---|---|---|---|")
for n in (20, 100, 200):
    before, after = (os.path.join(out, f"metrics-{w}-n{n}.txt") for w in ("before", "after"))
    if not os.path.exists(after):
        continue
    cells = []
    for metric in ("degre_request_duration_seconds", "degre_model_compute_duration_seconds"):
        b, a = buckets(before, metric), buckets(after, metric)
        cells += [f"{1000 * quantile(q, b, a):.3f}" for q in (0.5, 0.99)]
    print(f"| {n} | " + " | ".join(cells) + " |")

hot = load("hot-reload")
swaps = [float(s) for s in open(os.path.join(out, "swaps.txt")).read().split()]
print(f"\n### Hot reload: {len(swaps)} versions published under {hot['target_rate']:.0f}/s\n")
print(f"sent {hot['sent']}, ok {hot['ok']}, errors {hot['errors']}, codes {hot['codes']}; "
      f"p99 over the run {hot['latency']['p99_ms']:.3f} ms\n")
print("| publish at s | p99 ms, second before | p99 ms, second of | p99 ms, second after | errors in those 3 s |")
print("|---|---|---|---|---|")
timeline = hot["timeline"]
for t in swaps:
    s = int(t)
    window = [timeline[i] for i in (s - 1, s, s + 1) if 0 <= i < len(timeline)]
    p99 = [f"{w['p99_ms']:.3f}" for w in window]
    print(f"| {t:.1f} | " + " | ".join(p99) + f" | {sum(w['errors'] for w in window)} |")
