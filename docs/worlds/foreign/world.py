#!/usr/bin/env python3
"""A "foreign" recommender-logs simulator, independent of degre's own `simulate`.

Differences from degre's world: a position-based click model (not cascade), a varying
number of candidates (12..48) for 8 slots, substitution between similar items above a
slot (cosine similarity of latent vectors, not category redundancy), and a purchase step
whose probability falls with price, so the GMV-optimal and click-optimal lists differ.

    python3 world.py --seed S --out DIR [--train 20000] [--test 2000]
                     [--log-temperature 0.5] [--log-random 0.05] [--attr-bias -1.5]
                     [--candidates 12-48] [--slots 8] [--pool N]

writes DIR/train.parquet, DIR/test.parquet (schema: degre docs/data.md) and DIR/truth.npz
(catalog, user weights and the test requests' hidden state; score.py reads it back).
The model's formulas live here as functions so that score.py uses exactly the same ones.
"""
import argparse
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# ---- world constants -------------------------------------------------------------
N_ITEMS, LATENT, N_CAT, N_BRAND = 4000, 12, 25, 150
N_SEG, USER_DIM, N_DEVICE = 12, 8, 4
PROJ_DIMS, NOISE_DIMS = 10, 3            # item dense = 10 projected + 1 log price + 3 noise
ITEM_DENSE = PROJ_DIMS + 1 + NOISE_DIMS  # 14
PRICE_MEDIAN, PRICE_SIGMA = 30.0, 0.9
POOL, N_MIN, N_MAX, K = 300, 12, 48, 8
ATTR_BIAS = -1.5
EXAM_POWER, SMALL_SCREEN, SMALL_SCREEN_FROM, SMALL_SCREEN_FACTOR = 0.8, 3, 4, 0.5
SUBST = 0.6                              # substitution strength
BUY_BIAS, BUY_PRICE, BUY_SENS = 1.0, 0.8, 0.5
PRICE_SENS_DIM = USER_DIM - 1            # the user dim that is price sensitivity
RETRIEVAL_NOISE, RANKING_NOISE = 1.0, 0.6
LOG_TEMPERATURE, LOG_RANDOM = 0.5, 0.05
INTERACTION_SD = 1.2                     # sd of user·W·latent over random (user, item)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- the true model (shared with score.py) ---------------------------------------
def ctr_logit(truth, u, items):
    """Logit of the discount-free attraction of `items` for user vector `u`."""
    return truth["quality"][items] + truth["latent"][items] @ (truth["W"].T @ u) + ATTR_BIAS


def attraction(truth, u, items):
    return sigmoid(ctr_logit(truth, u, items))


def p_buy(truth, u, items):
    """P(purchase | click)."""
    lp = np.log(truth["price"][items]) - np.log(PRICE_MEDIAN)
    return sigmoid(BUY_BIAS - BUY_PRICE * lp + BUY_SENS * u[PRICE_SENS_DIM])


def examination(k, device):
    """Position-based examination probability of slots 0..k-1."""
    e = 1.0 / (1.0 + np.arange(k)) ** EXAM_POWER
    if device == SMALL_SCREEN:
        e[SMALL_SCREEN_FROM:] *= SMALL_SCREEN_FACTOR
    return e


def substitution_sim(truth, items):
    """max(0, cos(latent_i, latent_j))^2 between `items` (matrix)."""
    z = truth["latent"][items]
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.maximum(0.0, z @ z.T) ** 2


def discounts(sim2, lists):
    """Substitution discount of every slot of every list.

    sim2: (N, N) from substitution_sim over a request's candidates; lists: (M, k)
    candidate indices. Slot t gets prod_{j<t} (1 - SUBST * sim2[l_t, l_j]).
    """
    lists = np.atleast_2d(lists)
    k = lists.shape[1]
    fac = 1.0 - SUBST * sim2[lists[:, :, None], lists[:, None, :]]
    above = np.tril(np.ones((k, k), dtype=bool), -1)  # [t, j] true when j < t
    return np.where(above, fac, 1.0).prod(axis=2)


def expected_reward(exam, attr, worth, sim2, lists):
    """Exact expected reward of each list: sum_t exam_t * attr * discount_t * worth.

    worth = 1 gives expected clicks; worth = P(buy|click) * price gives expected GMV.
    """
    lists = np.atleast_2d(lists)
    return (exam[: lists.shape[1]] * attr[lists] * discounts(sim2, lists) * worth[lists]).sum(1)


# ---- generation ------------------------------------------------------------------
def make_catalog(rng):
    cat_centres = rng.normal(size=(N_CAT, LATENT))
    category = rng.integers(N_CAT, size=N_ITEMS)
    # Items of a category share most of their direction: substitutes of each other.
    latent = 0.75 * cat_centres[category] + 0.66 * rng.normal(size=(N_ITEMS, LATENT))
    brand = rng.integers(N_BRAND, size=N_ITEMS)
    price = PRICE_MEDIAN * np.exp(PRICE_SIGMA * rng.normal(size=N_ITEMS))
    quality = 0.8 * rng.normal(size=N_ITEMS)
    seg_centres = rng.normal(size=(N_SEG, USER_DIM))
    W = rng.normal(size=(USER_DIM, LATENT))
    # Scale W so that user·W·latent has sd INTERACTION_SD over random users and items.
    users = seg_centres[rng.integers(N_SEG, size=4000)] + 0.5 * rng.normal(size=(4000, USER_DIM))
    inter = np.einsum("nd,dl,nl->n", users, W, latent[rng.integers(N_ITEMS, size=4000)])
    W *= INTERACTION_SD / inter.std()
    # Observed item features: a noisy projection of the latent, a noisy log price, noise.
    P = rng.normal(size=(PROJ_DIMS, LATENT)) / np.sqrt(LATENT)
    dense = np.concatenate(
        [
            latent @ P.T + 0.3 * rng.normal(size=(N_ITEMS, PROJ_DIMS)),
            (np.log(price / PRICE_MEDIAN) + 0.1 * rng.normal(size=N_ITEMS))[:, None],
            rng.normal(size=(N_ITEMS, NOISE_DIMS)),
        ],
        axis=1,
    ).astype(np.float32)
    return dict(latent=latent, category=category, brand=brand, price=price, quality=quality,
                seg_centres=seg_centres, W=W, item_dense=dense)


def make_requests(truth, rng, n, prefix):
    """Simulate n logged requests. Returns the rows' columns and their hidden state."""
    rows = dict(request_id=[], ctx_dense=[], ctx_cat=[], cand_items=[], ranking_score=[],
                exposed=[], clicks=[], values=[])
    hidden = dict(user=[], device=[], segment=[])
    for r in range(n):
        seg, device = rng.integers(N_SEG), rng.integers(N_DEVICE)
        u = truth["seg_centres"][seg] + 0.5 * rng.normal(size=USER_DIM)
        # Retrieval: the top N of a random pool by a noisy true CTR.
        pool = rng.choice(N_ITEMS, size=POOL, replace=False)
        noisy = ctr_logit(truth, u, pool) + RETRIEVAL_NOISE * rng.normal(size=POOL)
        n_cand = rng.integers(N_MIN, N_MAX + 1)
        cands = pool[np.argsort(-noisy)[:n_cand]]
        cands = cands[rng.permutation(n_cand)]  # the row's candidate order carries nothing
        rs = ctr_logit(truth, u, cands) + RANKING_NOISE * rng.normal(size=n_cand)
        # Logging policy: Plackett-Luce on ranking_score / T (Gumbel top-k), 5% uniform.
        k = min(K, n_cand)
        if rng.random() < LOG_RANDOM:
            shown = rng.permutation(n_cand)[:k]
        else:
            shown = np.argsort(-(rs / LOG_TEMPERATURE + rng.gumbel(size=n_cand)))[:k]
        # Feedback: independent position-based clicks, then a purchase given a click.
        sim2 = substitution_sim(truth, cands)
        p_click = examination(k, device) * attraction(truth, u, cands)[shown] * discounts(sim2, shown)[0]
        click = rng.random(k) < p_click
        buy = click & (rng.random(k) < p_buy(truth, u, cands[shown]))
        value = np.where(buy, truth["price"][cands[shown]], 0.0)

        rows["request_id"].append(f"{prefix}-{r}")
        rows["ctx_dense"].append(u.astype(np.float32))
        rows["ctx_cat"].append(np.array([seg, device], dtype=np.int64))
        rows["cand_items"].append(cands)
        rows["ranking_score"].append(rs.astype(np.float32))
        rows["exposed"].append(shown.astype(np.int32))
        rows["clicks"].append(click)
        rows["values"].append(value.astype(np.float32))
        hidden["user"].append(u)
        hidden["device"].append(device)
        hidden["segment"].append(seg)
    return rows, hidden


def _list_array(chunks, dtype):
    """list<dtype> from a list of 1-D arrays."""
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int32)
    flat = np.concatenate(chunks) if chunks else np.array([])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, dtype))


def write_parquet(truth, rows, path):
    items = np.concatenate(rows["cand_items"])
    n_dense = truth["item_dense"].shape[1]
    cand_struct = pa.StructArray.from_arrays(
        [
            pa.array([f"i{i}" for i in items], pa.string()),
            _list_array(list(truth["item_dense"][items]), pa.float32()),
            _list_array(list(np.stack([truth["category"][items], truth["brand"][items]], 1)),
                        pa.int64()),
            pa.array(np.concatenate(rows["ranking_score"]), pa.float32()),
        ],
        names=["item_id", "dense", "categorical", "ranking_score"],
    )
    cand_off = np.concatenate([[0], np.cumsum([len(c) for c in rows["cand_items"]])]).astype(np.int32)
    context = pa.StructArray.from_arrays(
        [_list_array(rows["ctx_dense"], pa.float32()), _list_array(rows["ctx_cat"], pa.int64())],
        names=["dense", "categorical"],
    )
    table = pa.table({
        "request_id": pa.array(rows["request_id"], pa.string()),
        "context": context,
        "candidates": pa.ListArray.from_arrays(pa.array(cand_off, pa.int32()), cand_struct),
        "exposed": _list_array(rows["exposed"], pa.int32()),
        "clicks": _list_array(rows["clicks"], pa.bool_()),
        "values": _list_array(rows["values"], pa.float32()),
    })
    assert n_dense == ITEM_DENSE
    pq.write_table(table, path, compression="snappy")


def load_truth(world_dir):
    """The world's arrays; also restores the constants it was made with (see --attr-bias)."""
    with np.load(os.path.join(world_dir, "truth.npz")) as z:
        truth = {k: z[k] for k in z.files}
    globals().update(json.loads(str(truth["params"])))
    return truth


def main():
    global ATTR_BIAS, LOG_TEMPERATURE, LOG_RANDOM, N_MIN, N_MAX, K, POOL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--log-temperature", type=float, default=LOG_TEMPERATURE,
                    help="the logging policy's temperature on ranking_score (small: logs ~ upstream order)")
    ap.add_argument("--log-random", type=float, default=LOG_RANDOM,
                    help="share of logged lists shown in uniformly random order")
    ap.add_argument("--attr-bias", type=float, default=ATTR_BIAS,
                    help="logit offset of every attraction (-1.5: ~2 clicks in 8 slots; -4.5: ~1 in 8 requests)")
    ap.add_argument("--candidates", default=f"{N_MIN}-{N_MAX}",
                    help="candidates per request, MIN-MAX (uniform)")
    ap.add_argument("--slots", type=int, default=K, help="slots K of a logged list")
    ap.add_argument("--pool", type=int, default=None,
                    help="retrieval pool per request (default: max(300, 3 x the most candidates))")
    a = ap.parse_args()
    N_MIN, N_MAX = (int(x) for x in a.candidates.split("-"))
    if not 1 <= N_MIN <= N_MAX:
        ap.error(f"--candidates {a.candidates}: expected MIN-MAX with 1 <= MIN <= MAX")
    K = a.slots
    POOL = a.pool or max(300, 3 * N_MAX)
    if POOL < N_MAX:
        ap.error(f"--pool {POOL}: smaller than the most candidates ({N_MAX})")
    ATTR_BIAS = a.attr_bias
    LOG_TEMPERATURE, LOG_RANDOM = a.log_temperature, a.log_random
    os.makedirs(a.out, exist_ok=True)

    # Independent, seeded streams for the catalog and each split.
    cat_ss, train_ss, test_ss = np.random.SeedSequence(a.seed).spawn(3)
    truth = make_catalog(np.random.default_rng(cat_ss))
    train_rows, _ = make_requests(truth, np.random.default_rng(train_ss), a.train, f"tr{a.seed}")
    test_rows, test_hidden = make_requests(truth, np.random.default_rng(test_ss), a.test, f"te{a.seed}")
    write_parquet(truth, train_rows, os.path.join(a.out, "train.parquet"))
    write_parquet(truth, test_rows, os.path.join(a.out, "test.parquet"))

    # Hidden state of the test requests, in test.parquet's row order.
    n_cand = np.array([len(c) for c in test_rows["cand_items"]])
    np.savez(
        os.path.join(a.out, "truth.npz"),
        **truth,
        test_request_id=np.array(test_rows["request_id"]),
        test_user=np.array(test_hidden["user"]),
        test_device=np.array(test_hidden["device"]),
        test_cand_offsets=np.concatenate([[0], np.cumsum(n_cand)]),
        test_cand_items=np.concatenate(test_rows["cand_items"]),
        params=json.dumps({k: v for k, v in globals().items() if k.isupper()}),
        seed=a.seed,
    )

    def summary(rows):
        clicks = np.concatenate(rows["clicks"])
        vals = np.concatenate(rows["values"])
        return dict(requests=len(rows["request_id"]),
                    mean_candidates=float(np.mean([len(c) for c in rows["cand_items"]])),
                    clicks_per_request=float(clicks.sum() / len(rows["request_id"])),
                    gmv_per_request=float(vals.sum() / len(rows["request_id"])),
                    buy_rate_per_click=float((vals > 0).sum() / max(1, clicks.sum())))
    info = dict(seed=a.seed, train=summary(train_rows), test=summary(test_rows))
    with open(os.path.join(a.out, "world.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
