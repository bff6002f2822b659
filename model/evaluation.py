"""Offline recall metrics (ARCHITECTURE section 8) for MIND and its baselines.

Per eval user: encode the history into K interest vectors, search the top N items for each of the
user's interests, merge them with ``model.merge.merge`` exactly as the worker does (best score per
item, ranked by score) but WITHOUT dropping already-seen items, and score the ranked list:

- Recall@N  = hits / |eval items| (no truncation of the denominator to N);
- HitRate@N = 1 if at least one hit else 0;
- NDCG@N    = sum over hits of 1 / log2(rank + 2) (rank 0-based) divided by the ideal DCG of
  min(|eval items|, N) hits.

Each is averaged over all eval users. (ComiRec's own code divides DCG by the ideal DCG of the number
of *hits*, which inflates NDCG; we follow the architecture's definition.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from model.data import EvalUser, item_popularity, pad_histories
from model.merge import merge

Encode = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

_DISCOUNT_CACHE = 1.0 / np.log2(np.arange(2, 10_002, dtype=np.float64))


def _discount(n: int) -> np.ndarray:
    if n <= _DISCOUNT_CACHE.size:
        return _DISCOUNT_CACHE[:n]
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def recall_ndcg_hitrate(
    ranked: Sequence[int] | np.ndarray, truth: Iterable[int] | np.ndarray, n: int
) -> tuple[float, float, float]:
    """``(recall, ndcg, hit)`` of one ranked list against one user's eval items, at ``n``.

    ``ranked`` is cut to its first ``n`` entries; duplicates in it count once (first rank).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    truth_arr = np.unique(np.fromiter(truth, dtype=np.int64) if not isinstance(truth, np.ndarray)
                          else truth.astype(np.int64, copy=False))
    if truth_arr.size == 0:
        raise ValueError("a user needs at least one eval item")
    top = np.asarray(ranked, dtype=np.int64)[:n]
    # Only the first occurrence of an item can be a hit.
    _, first = np.unique(top, return_index=True)
    is_first = np.zeros(top.size, dtype=bool)
    is_first[first] = True
    hit_mask = is_first & np.isin(top, truth_arr)
    hits = int(hit_mask.sum())
    if hits == 0:
        return 0.0, 0.0, 0.0
    disc = _discount(max(top.size, min(truth_arr.size, n)))
    dcg = float(disc[: top.size][hit_mask].sum())
    idcg = float(disc[: min(truth_arr.size, n)].sum())
    return hits / truth_arr.size, dcg / idcg, 1.0


HISTORY_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 4), (5, 7), (8, 15), (16, None))


def _bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def breakdown(
    hist_len: Sequence[int], recall: Sequence[float], repeat: tuple[int, int], new: tuple[int, int], n: int
) -> dict:
    """Where the recall comes from (diagnostics beside the headline metrics): the mean per-user Recall@n
    by history length (``HISTORY_BUCKETS``; ``None`` where a bucket is empty) and, over all eval items,
    the share found among re-views (items already in the user's history) and among new items.

    A Recall@n ratio alone hides where it comes from: short or long histories, re-views (found by
    any model that keeps the history's items close to its user vector) or new items. On Retailrocket
    that is what explains MIND's miss (docs/benchmarks.md, "Why Retailrocket misses")."""
    if len(hist_len) != len(recall):
        raise ValueError(f"{len(hist_len)} history lengths for {len(recall)} recalls")
    lens = np.asarray(hist_len, dtype=np.int64)
    rec = np.asarray(recall, dtype=np.float64)
    out: dict[str, float | int | None] = {}
    for lo, hi in HISTORY_BUCKETS:
        sel = (lens >= lo) & (lens <= (hi if hi is not None else np.iinfo(np.int64).max))
        name = _bucket_name(lo, hi)
        out[f"users_hist_{name}"] = int(sel.sum())
        out[f"recall@{n}_hist_{name}"] = float(rec[sel].mean()) if sel.any() else None
    (rep_hit, rep_all), (new_hit, new_all) = repeat, new
    out[f"repeat_recall@{n}"] = rep_hit / rep_all if rep_all else None
    out[f"new_recall@{n}"] = new_hit / new_all if new_all else None
    out["repeat_share"] = rep_all / (rep_all + new_all) if rep_all + new_all else None
    return out


def _summary(recall: list[float], ndcg: list[float], hit: list[float], n: int) -> dict:
    users = len(recall)
    if users == 0:
        raise ValueError("no eval users")
    return {
        f"recall@{n}": float(np.mean(recall)),
        f"ndcg@{n}": float(np.mean(ndcg)),
        f"hitrate@{n}": float(np.mean(hit)),
        "users": users,
    }


def evaluate(
    users: Sequence[EvalUser],
    encode: Encode,
    search: Search,
    top_n: int,
    maxlen: int,
    batch_size: int = 256,
    exclude_seen: bool = False,
) -> dict:
    """Recall/NDCG/HitRate@``top_n`` of a user tower + item index over ``users``.

    ``encode(hist [B, maxlen] int64, length [B] int64) -> (interests [B, K, D] float32,
    n_interests [B] int64)``; ``search(queries [n, D] float32, top_n) -> (ids [n, top_n] int64
    with -1 padding, scores [n, top_n] float32)``. Only each user's first ``n_interests`` interests
    are searched (one search call per batch); the rest is ``merge`` with no exclusion.
    Returns ``{"recall@N", "ndcg@N", "hitrate@N", "users", "avg_interests"}`` and ``breakdown``'s keys
    (recall by history length, re-view and new items).

    ``exclude_seen`` scores what the worker serves by default (``worker.exclude_seen``): the user's
    whole history is dropped from the ranked list *and* from the eval items, so only new items count;
    users whose eval items are all re-views have nothing to find and are left out (``users_all_seen``).
    """
    if top_n <= 0 or batch_size <= 0:
        raise ValueError(f"top_n and batch_size must be positive, got {top_n}, {batch_size}")
    recall: list[float] = []
    ndcg: list[float] = []
    hit: list[float] = []
    hist_len: list[int] = []
    repeat = [0, 0]  # [hits, eval items] among re-views (eval items already in the history)
    new = [0, 0]  # the same among new items
    n_int_total = 0
    all_seen = 0
    for lo in range(0, len(users), batch_size):
        chunk = users[lo : lo + batch_size]
        for u in chunk:
            if len(u.hist) == 0:
                raise ValueError(f"eval user {u.user_id} has an empty history")
        hist, length = pad_histories([u.hist for u in chunk], maxlen)
        interests, n_int = encode(hist, length)
        interests = np.asarray(interests, dtype=np.float32)
        b, k, _ = interests.shape
        if b != len(chunk):
            raise ValueError(f"encode returned {b} users for a batch of {len(chunk)}")
        n_int = np.clip(np.asarray(n_int, dtype=np.int64).reshape(b), 1, k)
        valid = np.arange(k)[None, :] < n_int[:, None]  # [B, K]
        # Excluded items may fill a list: search deep enough that top_n others always remain.
        depth = top_n + (max(np.unique(u.hist).size for u in chunk) if exclude_seen else 0)
        ids, scores = search(np.ascontiguousarray(interests[valid]), depth)
        ids, scores = np.asarray(ids), np.asarray(scores)
        row = np.r_[0, np.cumsum(n_int)]
        for i, u in enumerate(chunk):
            truth = np.setdiff1d(u.eval_items, u.hist) if exclude_seen else u.eval_items
            if truth.size == 0:
                all_seen += 1
                continue
            merged = merge(ids[row[i] : row[i + 1]], scores[row[i] : row[i + 1]], top_n,
                           exclude=u.hist if exclude_seen else ())
            ranked = [c.item_id for c in merged]
            r, nd, h = recall_ndcg_hitrate(ranked, truth, top_n)
            distinct = np.unique(truth)  # as recall_ndcg_hitrate counts them
            seen = np.isin(distinct, u.hist)
            found = np.isin(distinct, ranked)  # merge returned at most top_n
            repeat[0] += int((found & seen).sum())
            repeat[1] += int(seen.sum())
            new[0] += int((found & ~seen).sum())
            new[1] += int((~seen).sum())
            hist_len.append(len(u.hist))
            recall.append(r)
            ndcg.append(nd)
            hit.append(h)
        n_int_total += int(n_int.sum())
    out = _summary(recall, ndcg, hit, top_n)
    out.update(breakdown(hist_len, recall, (repeat[0], repeat[1]), (new[0], new[1]), top_n))
    out["avg_interests"] = n_int_total / len(users)
    if exclude_seen:
        out["users_all_seen"] = all_seen
    return out


def exact_search(item_ids: np.ndarray, item_vecs: np.ndarray, chunk_bytes: int = 64 << 20) -> Search:
    """Brute-force inner-product search (what a FLAT index returns), as an ``evaluate`` search.

    Queries are scored in chunks (one BLAS matmul each, ``chunk_bytes`` of scores at most), the top
    N picked with ``argpartition`` and sorted by score, ties by item id; rows are padded with id -1
    and score -inf when the catalogue has fewer than N items.
    """
    ids = np.asarray(item_ids, dtype=np.int64)
    vecs = np.ascontiguousarray(item_vecs, dtype=np.float32)
    if vecs.ndim != 2 or ids.shape != (vecs.shape[0],):
        raise ValueError(f"item_ids {ids.shape} and item_vecs {vecs.shape} do not match")
    m = ids.size
    vecs_t = np.ascontiguousarray(vecs.T)

    def search(queries: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != vecs.shape[1]:
            raise ValueError(f"queries {q.shape} do not match item dim {vecs.shape[1]}")
        n = q.shape[0]
        out_ids = np.full((n, topn), -1, dtype=np.int64)
        out_scores = np.full((n, topn), -np.inf, dtype=np.float32)
        k = min(topn, m)
        if k == 0 or n == 0:
            return out_ids, out_scores
        step = max(1, chunk_bytes // (4 * max(m, 1)))
        for lo in range(0, n, step):
            s = q[lo : lo + step] @ vecs_t  # [c, M]
            part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (len(s), 1))
            ps = np.take_along_axis(s, part, 1)
            pid = ids[part]
            order = np.lexsort((pid, -ps), axis=1)  # score desc, then id asc
            out_ids[lo : lo + len(s), :k] = np.take_along_axis(pid, order, 1)
            out_scores[lo : lo + len(s), :k] = np.take_along_axis(ps, order, 1)
        return out_ids, out_scores

    return search


def popular_items(user_seqs: dict[int, np.ndarray], item_count: int, top_n: int) -> np.ndarray:
    """The ``top_n`` most clicked item ids in training (ties by smaller id), padding excluded."""
    counts = item_popularity(user_seqs, item_count)
    counts[0] = -1
    order = np.lexsort((np.arange(item_count), -counts))
    order = order[counts[order] > 0]
    return order[:top_n].astype(np.int64)


def most_popular(
    user_seqs: dict[int, np.ndarray],
    item_count: int,
    top_n: int,
    users: Sequence[EvalUser],
) -> dict:
    """Metrics of the most-popular baseline: every user gets the same ranked list of the ``top_n``
    most clicked training items (seen items not dropped, as for the model)."""
    ranked = popular_items(user_seqs, item_count, top_n)
    recall: list[float] = []
    ndcg: list[float] = []
    hit: list[float] = []
    for u in users:
        r, nd, h = recall_ndcg_hitrate(ranked, u.eval_items, top_n)
        recall.append(r)
        ndcg.append(nd)
        hit.append(h)
    return _summary(recall, ndcg, hit, top_n)
