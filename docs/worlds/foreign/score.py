#!/usr/bin/env python3
"""Exact expected clicks and GMV of ranking policies on a foreign world's test split.

    python3 score.py --world DIR [--server 127.0.0.1:PORT] [--requests 2000]

Policies, each a list of the world's K (8 by default) of a request's candidates:
  logged              the logged exposed list
  upstream            candidates by ranking_score, top K
  degre               the list the degre server returns (only with --server)
  NAME                each `--lists NAME.jsonl` file (`degre eval --write-lists`)
  pointwise_true_gmv  by attraction * P(buy|click) * price (no position, no discount)
  best                best list found under the true expected GMV: greedy slot by slot on
                      the exact marginal, then best-improvement local search (swap, move,
                      replace by / insert an unlisted candidate) to a local optimum;
                      restarted from greedy lists with a forced first item and from any
                      other policy's list (degre excepted) that beats it, so best >= each
  best_clicks         the same under expected clicks
Every expectation is exact (world.expected_reward), nothing is sampled. Prints a table and
writes DIR/score.json. Needs numpy, pyarrow, and for --server grpcio and grpcio-tools.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import world as W  # noqa: E402

PROTO_ROOT = os.path.join(HERE, "..", "..", "..", "proto")
# Generated stubs go outside the repository.
GEN = os.path.join(tempfile.gettempdir(), "degre-foreign-gen")


# ---- local search ----------------------------------------------------------------
_TEMPLATES = {}


def neighbour_templates(k, n):
    """Index arrays (M, k) into X = concat(list, outside candidates) giving every
    neighbour of the list: swap two slots, move one slot elsewhere, replace a slot by an
    outside candidate, insert an outside candidate at a slot (the last one drops off)."""
    key = (k, n)
    if key not in _TEMPLATES:
        base, out = list(range(k)), range(k, n)
        rows = []
        for i in range(k):
            for j in range(i + 1, k):
                r = base[:]
                r[i], r[j] = r[j], r[i]
                rows.append(r)
            for j in range(k):
                if abs(i - j) > 1:  # adjacent moves are swaps
                    r = base[:]
                    r.insert(j, r.pop(i))
                    rows.append(r)
            for c in out:
                r = base[:]
                r[i] = c
                rows.append(r)
                if i < k - 1:  # inserting at the last slot is a replacement
                    rows.append((base[:i] + [c] + base[i:])[:k])
        _TEMPLATES[key] = np.array(rows, dtype=np.int64)
    return _TEMPLATES[key]


def greedy(exam, attr, worth, sim2, k):
    """Slot by slot, the candidate with the largest exact marginal expected reward."""
    n = len(attr)
    chosen, disc = [], np.ones(n)
    for _ in range(k):
        gain = attr * disc * worth  # exam_t is common to every candidate at slot t
        gain[chosen] = -np.inf
        c = int(np.argmax(gain))
        chosen.append(c)
        disc = disc * (1.0 - W.SUBST * sim2[:, c])
    return np.array(chosen)


def local_search(exam, attr, worth, sim2, lst):
    """Best-improvement local search from `lst` to a local optimum."""
    n, k = len(attr), len(lst)
    tpl = neighbour_templates(k, n)
    val = W.expected_reward(exam, attr, worth, sim2, lst)[0]
    while True:
        x = np.concatenate([lst, np.setdiff1d(np.arange(n), lst)])
        nb = x[tpl]
        vals = W.expected_reward(exam, attr, worth, sim2, nb)
        b = int(np.argmax(vals))
        if vals[b] <= val + 1e-12 * max(1.0, abs(val)):
            return lst, val
        lst, val = nb[b], vals[b]


def best_list(exam, attr, worth, sim2, k, starts, restarts=5):
    """Multi-start local search: from the greedy list, from greedy lists whose first slot
    is forced to each of the next `restarts` best single items, and from any of `starts`
    (other policies' lists) that beats the best so far. Returns (list, value)."""
    def greedy_from(first):
        w = worth.copy()
        w[first] = np.inf  # forces `first` into slot 0; the rest is greedy
        return greedy(exam, attr, w, sim2, k)

    g = greedy(exam, attr, worth, sim2, k)
    single = np.argsort(-(attr * worth), kind="stable")
    firsts = [c for c in single if c != g[0]][:restarts]
    best = local_search(exam, attr, worth, sim2, g)
    for f in firsts:
        cand = local_search(exam, attr, worth, sim2, greedy_from(f))
        if cand[1] > best[1]:
            best = cand
    for s in starts:
        s = np.asarray(s)
        if len(s) == k and W.expected_reward(exam, attr, worth, sim2, s)[0] > best[1]:
            best = local_search(exam, attr, worth, sim2, s)
    return best


# ---- degre server ----------------------------------------------------------------
def grpc_modules():
    if not os.path.exists(os.path.join(GEN, "degre", "v1", "reranker_pb2_grpc.py")):
        os.makedirs(GEN, exist_ok=True)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
                        f"--python_out={GEN}", f"--grpc_python_out={GEN}",
                        os.path.join(PROTO_ROOT, "degre/v1/reranker.proto")], check=True)
    sys.path.insert(0, GEN)
    from degre.v1 import reranker_pb2, reranker_pb2_grpc
    return reranker_pb2, reranker_pb2_grpc


def degre_lists(server, rows, k, workers=8):
    """The server's list for every row (candidate indices, best slot first)."""
    import grpc
    pb, pb_grpc = grpc_modules()
    channel = grpc.insecure_channel(server)
    stub = pb_grpc.RerankerStub(channel)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    model = dict(model_name=info.model_name, model_version=info.model_version,
                 objective=info.objective, engine=info.engine, max_candidates=info.max_candidates)
    print(f"degre server {server}: {model}", file=sys.stderr)
    if max(len(r["candidates"]) for r in rows) > info.max_candidates:
        print(f"warning: requests carry more than max_candidates={info.max_candidates}",
              file=sys.stderr)

    def call(row):
        req = pb.RerankRequest(
            request_id=row["request_id"],
            context=pb.Features(dense=row["context"]["dense"], categorical=row["context"]["categorical"]),
            candidates=[pb.Candidate(item_id=c["item_id"],
                                     features=pb.Features(dense=c["dense"], categorical=c["categorical"]),
                                     ranking_score=c["ranking_score"]) for c in row["candidates"]],
            top_k=k,
        )
        resp = stub.Rerank(req, timeout=30)
        lst = np.array([it.candidate_index for it in resp.items], dtype=np.int64)
        ids = [row["candidates"][i]["item_id"] for i in lst]
        assert ids == [it.item_id for it in resp.items], "candidate_index / item_id mismatch"
        assert len(set(lst.tolist())) == len(lst) == min(k, len(row["candidates"])), \
            f"{row['request_id']}: bad list {lst.tolist()}"
        return lst

    with ThreadPoolExecutor(workers) as ex:
        out = list(ex.map(call, rows))
    channel.close()
    return out, model


# ---- main ------------------------------------------------------------------------
def ci(d):
    d = np.asarray(d)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    return dict(mean=float(d.mean()), lo=float(d.mean() - half), hi=float(d.mean() + half),
                half_width=float(half))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--server", help="host:port of a degre server; omitted: no degre policy")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--lists", nargs="*", default=[], help="degre eval --write-lists files")
    a = ap.parse_args()

    truth = W.load_truth(a.world)
    rows = pq.read_table(os.path.join(a.world, "test.parquet")).slice(0, a.requests).to_pylist()
    n = len(rows)
    k = W.K

    degre, model = None, None
    if a.server:
        degre, model = degre_lists(a.server, rows, k, a.workers)

    extra = {}
    for f in a.lists:
        d = {}
        for line in open(f):
            if line.strip():
                j = json.loads(line); d[j["request_id"]] = np.array(j["list"], dtype=np.int64)
        extra[os.path.basename(f).rsplit(".", 1)[0]] = d
    names = ["logged", "upstream"] + (["degre"] if degre is not None else []) + \
        list(extra) + ["pointwise_true_gmv", "best", "best_clicks"]
    gmv = {p: np.zeros(n) for p in names}
    clk = {p: np.zeros(n) for p in names}
    offs = truth["test_cand_offsets"]
    for r, row in enumerate(rows):
        # Hidden state of this request; check it matches the row.
        assert truth["test_request_id"][r] == row["request_id"]
        items = truth["test_cand_items"][offs[r]:offs[r + 1]]
        assert [f"i{i}" for i in items] == [c["item_id"] for c in row["candidates"]]
        u, device = truth["test_user"][r], int(truth["test_device"][r])
        kk = min(k, len(items))

        exam = W.examination(kk, device)
        attr = W.attraction(truth, u, items)
        worth_gmv = W.p_buy(truth, u, items) * truth["price"][items]
        ones = np.ones(len(items))
        sim2 = W.substitution_sim(truth, items)

        rs = np.array([c["ranking_score"] for c in row["candidates"]])
        lists = dict(
            logged=np.array(row["exposed"], dtype=np.int64),
            upstream=np.argsort(-rs, kind="stable")[:kk],
            pointwise_true_gmv=np.argsort(-(attr * worth_gmv), kind="stable")[:kk],
        )
        if degre is not None:
            lists["degre"] = degre[r]
        for name, d in extra.items():
            lists[name] = d[row["request_id"]]
        others = [lists[p] for p in ("logged", "upstream", "pointwise_true_gmv")]
        lists["best"], _ = best_list(exam, attr, worth_gmv, sim2, kk, others)
        lists["best_clicks"], _ = best_list(exam, attr, ones, sim2, kk, others + [lists["best"]])

        for p in names:
            gmv[p][r] = W.expected_reward(exam, attr, worth_gmv, sim2, lists[p])[0]
            clk[p][r] = W.expected_reward(exam, attr, ones, sim2, lists[p])[0]
        tol = 1e-9
        for p in names:
            if p != "degre" and p not in extra:
                assert gmv["best"][r] >= gmv[p][r] - tol, (row["request_id"], p)
                assert clk["best_clicks"][r] >= clk[p][r] - tol, (row["request_id"], p)

    out = dict(world=os.path.abspath(a.world), requests=n, server=a.server, model=model,
               policies={})
    bg, bc = gmv["best"].mean(), clk["best_clicks"].mean()
    print(f"{n} test requests of {a.world}; exact expectations under the true model\n")
    print(f"{'policy':<20}{'E[GMV]':>10}{'% best':>9}{'E[clicks]':>11}{'% best_clicks':>15}")
    for p in names:
        g, c = gmv[p].mean(), clk[p].mean()
        out["policies"][p] = dict(gmv=float(g), gmv_pct_of_best=float(100 * g / bg),
                                  clicks=float(c), clicks_pct_of_best=float(100 * c / bc))
        print(f"{p:<20}{g:>10.3f}{100 * g / bg:>8.1f}%{c:>11.4f}{100 * c / bc:>14.1f}%")

    diffs = {}
    if degre is not None:
        for base in ("upstream", "logged"):
            diffs[f"degre-{base}"] = dict(gmv=ci(gmv["degre"] - gmv[base]),
                                          clicks=ci(clk["degre"] - clk[base]))
        beat = int((gmv["degre"] > gmv["best"] + 1e-9).sum())
        out["degre_above_best_gmv_requests"] = beat
        print()
        for name, d in diffs.items():
            g = d["gmv"]
            print(f"{name} GMV: {g['mean']:+.3f}  95% [{g['lo']:+.3f}, {g['hi']:+.3f}]"
                  f"   clicks: {d['clicks']['mean']:+.4f} ± {d['clicks']['half_width']:.4f}")
        if beat:
            print(f"note: degre's list beat the local-search best on {beat} requests")
    diffs["pointwise_true_gmv-upstream"] = dict(gmv=ci(gmv["pointwise_true_gmv"] - gmv["upstream"]))
    out["paired_differences"] = diffs
    with open(os.path.join(a.world, "score.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwrote {os.path.join(a.world, 'score.json')}")


if __name__ == "__main__":
    main()
