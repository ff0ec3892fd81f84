#!/usr/bin/env python3
"""How late a thread that sleeps 1 ms wakes, for SECONDS: run one pinned to each core
(`taskset -c 0 python3 wakeup_probe.py 0 & taskset -c 1 python3 wakeup_probe.py 1`),
alone or beside a load test, to tell a frozen core (every thread on it late) from a stall
in one program. Prints percentiles of the lateness and the count beyond 2 and 5 ms."""
import sys
import time

label = sys.argv[1] if len(sys.argv) > 1 else "?"
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
late = []
end = time.perf_counter() + seconds
while (start := time.perf_counter()) < end:
    time.sleep(0.001)
    late.append((time.perf_counter() - start - 0.001) * 1e3)
late.sort()
n = len(late)
print(f"core {label}: {n} wake-ups, late p50 {late[n // 2]:.3f} ms, p99 {late[int(n * 0.99)]:.3f}, "
      f"p99.9 {late[int(n * 0.999)]:.3f}, max {late[-1]:.3f}; "
      f"> 2 ms: {sum(x > 2 for x in late)}, > 5 ms: {sum(x > 5 for x in late)}")
