"""Markdown tables from the JSON reports of run_all.sh: python3 summarize.py RESULTS_DIR
(`python3 summarize.py --self-test` runs the examples in the docstrings)."""
import glob
import json
import os
import sys


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


def reload_row(t, timeline):
    """One row of the hot-reload table: a publish at t seconds and the p99 of the seconds
    before, of and after it. A second outside the run (a publish in its first or last second)
    or without a successful request shows "-", so every row keeps its five cells.

    >>> tl = [{"second": i, "ok": 10, "errors": i, "p99_ms": 1.0 + i} for i in range(3)]
    >>> reload_row(1.5, tl)
    '| 1.5 | 1.000 | 2.000 | 3.000 | 3 |'
    >>> reload_row(2.7, tl)  # the run's last second: no second after it
    '| 2.7 | 2.000 | 3.000 | - | 3 |'
    >>> reload_row(0.2, [{"second": 0, "ok": 0, "errors": 2, "p99_ms": 0.0}])
    '| 0.2 | - | - | - | 2 |'
    """
    s = int(t)
    window = [timeline[i] if 0 <= i < len(timeline) else None for i in (s - 1, s, s + 1)]
    p99 = [f"{w['p99_ms']:.3f}" if w and w["ok"] else "-" for w in window]
    errors = sum(w["errors"] for w in window if w)
    return f"| {t:.1f} | " + " | ".join(p99) + f" | {errors} |"


if sys.argv[1:] == ["--self-test"]:
    import doctest
    sys.exit(1 if doctest.testmod().failed else 0)

out = sys.argv[1]

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
for t in swaps:
    print(reload_row(t, hot["timeline"]))
