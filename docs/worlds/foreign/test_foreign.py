#!/usr/bin/env python3
"""Checks of world.py and score.py:  python3 test_foreign.py [--degre BINARY]

1. determinism: the same seed writes byte-identical files, another seed different ones;
2. the logged clicks and GMV of the test split agree with the exact expectations of the
   logged lists (z-scores), i.e. the simulator samples what score.py computes;
3. best_list is optimal on small instances (K = 4 of 11 candidates: brute force over
   all 7,920 ordered lists), for GMV and for clicks;
4. score.py runs (it asserts best >= every policy on every request) and the
   pointwise true-GMV sort beats the upstream sort on GMV;
5. with --degre, `degre check-logs` accepts train.parquet and test.parquet.
"""
import argparse
import filecmp
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import score as S  # noqa: E402
import world as W  # noqa: E402


def gen(out, seed, train=2000, test=200):
    subprocess.run([sys.executable, os.path.join(HERE, "world.py"), "--seed", str(seed), "--out", out,
                    "--train", str(train), "--test", str(test)], check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--degre", help="path to the degre binary, to run check-logs")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="foreign-test-")
    wa, wb, wc = (os.path.join(tmp, x) for x in "abc")
    gen(wa, 7), gen(wb, 7), gen(wc, 8)

    # 1. determinism
    for f in ("train.parquet", "test.parquet", "truth.npz"):
        assert filecmp.cmp(os.path.join(wa, f), os.path.join(wb, f), shallow=False), f
    assert not filecmp.cmp(os.path.join(wa, "test.parquet"), os.path.join(wc, "test.parquet"), shallow=False)
    print("ok determinism")

    # 2. logged outcomes vs exact expectations of the logged lists
    truth = W.load_truth(wa)
    rows = pq.read_table(os.path.join(wa, "test.parquet")).to_pylist()
    offs = truth["test_cand_offsets"]
    e_clk, e_gmv, o_clk, o_gmv = [], [], [], []
    for r, row in enumerate(rows):
        items = truth["test_cand_items"][offs[r]:offs[r + 1]]
        u, dev = truth["test_user"][r], int(truth["test_device"][r])
        lst = np.array(row["exposed"])
        exam, attr, sim2 = W.examination(len(lst), dev), W.attraction(truth, u, items), W.substitution_sim(truth, items)
        e_clk.append(W.expected_reward(exam, attr, np.ones(len(items)), sim2, lst)[0])
        e_gmv.append(W.expected_reward(exam, attr, W.p_buy(truth, u, items) * truth["price"][items], sim2, lst)[0])
        o_clk.append(sum(row["clicks"]))
        o_gmv.append(sum(row["values"]))
    for name, e, o in (("clicks", e_clk, o_clk), ("gmv", e_gmv, o_gmv)):
        d = np.array(o) - np.array(e)
        z = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
        print(f"ok logged {name}: observed {np.mean(o):.3f}, expected {np.mean(e):.3f}, z = {z:+.2f}")
        assert abs(z) < 4, z

    # 3. best_list vs brute force (small K so that enumeration is feasible)
    k, n_small, gaps, total = 4, 11, 0, 0
    perms = np.array(list(itertools.permutations(range(n_small), k)))
    for r in range(len(rows)):
        items = truth["test_cand_items"][offs[r]:offs[r + 1]][:n_small]
        u, dev = truth["test_user"][r], int(truth["test_device"][r])
        exam, attr, sim2 = W.examination(k, dev), W.attraction(truth, u, items), W.substitution_sim(truth, items)
        for worth in (W.p_buy(truth, u, items) * truth["price"][items], np.ones(n_small)):
            opt = W.expected_reward(exam, attr, worth, sim2, perms).max()
            _, v = S.best_list(exam, attr, worth, sim2, k, [])
            assert v <= opt + 1e-9
            total += 1
            gaps += v < opt - 1e-9
    print(f"best_list optimal on {total - gaps}/{total} brute-forced instances")
    assert gaps <= total // 50, gaps

    # 4. score.py (asserts best >= every policy per request)
    subprocess.run([sys.executable, os.path.join(HERE, "score.py"), "--world", wa], check=True,
                   stdout=subprocess.DEVNULL)
    sc = json.load(open(os.path.join(wa, "score.json")))["policies"]
    assert sc["pointwise_true_gmv"]["gmv"] > sc["upstream"]["gmv"], sc
    assert sc["best_clicks"]["clicks"] >= max(p["clicks"] for p in sc.values()) - 1e-9
    print("ok score.py: best >= every policy per request; pointwise_true_gmv > upstream on GMV")

    # 5. degre check-logs
    if a.degre:
        for f in ("train.parquet", "test.parquet"):
            out = subprocess.run([a.degre, "check-logs", os.path.join(wa, f)], capture_output=True, text=True)
            print(out.stdout + out.stderr)
            assert out.returncode == 0, f
        print("ok check-logs")
    print(f"all checks passed ({tmp})")


if __name__ == "__main__":
    main()
