"""Recall / NDCG / HitRate, evaluate(), exact_search and the most-popular baseline (model/evaluation.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.data import EvalUser
from model.evaluation import (
    breakdown,
    evaluate,
    exact_search,
    most_popular,
    popular_items,
    recall_ndcg_hitrate,
)


def _d(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


# ---------------------------------------------------------------- recall_ndcg_hitrate


def test_metrics_hand_computed() -> None:
    # Hits at ranks 0 and 2; 3 eval items; N = 5.
    r, nd, h = recall_ndcg_hitrate([10, 11, 12, 13, 14], {10, 12, 99}, 5)
    assert r == pytest.approx(2 / 3)
    assert nd == pytest.approx((_d(0) + _d(2)) / (_d(0) + _d(1) + _d(2)))
    assert h == 1.0


def test_metrics_ideal_dcg_uses_min_of_truth_and_n() -> None:
    # 4 eval items but N = 2: ideal DCG has 2 terms, recall still divides by 4 (no truncation).
    r, nd, _ = recall_ndcg_hitrate([1, 2, 3], [1, 2, 3, 4], 2)
    assert r == pytest.approx(2 / 4)
    assert nd == pytest.approx(1.0)
    # A single hit at rank 1 with one eval item: NDCG = 1/log2(3).
    assert recall_ndcg_hitrate([5, 7], [7], 2) == pytest.approx((1.0, _d(1), 1.0))


def test_metrics_no_hit_cut_and_duplicates() -> None:
    assert recall_ndcg_hitrate([1, 2, 3], {9}, 3) == (0.0, 0.0, 0.0)
    # The hit at rank 3 is beyond N = 3.
    assert recall_ndcg_hitrate([1, 2, 3, 9], {9}, 3) == (0.0, 0.0, 0.0)
    # A repeated item counts once, at its first rank; duplicate truth counts once too.
    r, nd, _ = recall_ndcg_hitrate([9, 9, 4], np.array([9, 9, 4]), 3)
    assert r == pytest.approx(1.0)
    assert nd == pytest.approx((_d(0) + _d(2)) / (_d(0) + _d(1)))


def test_metrics_reject_empty_truth_and_bad_n() -> None:
    with pytest.raises(ValueError):
        recall_ndcg_hitrate([1], set(), 5)
    with pytest.raises(ValueError):
        recall_ndcg_hitrate([1], {1}, 0)


# ---------------------------------------------------------------- exact_search


def test_exact_search_matches_brute_force_sort() -> None:
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(1, 501)).astype(np.int64)
    vecs = rng.normal(size=(500, 8)).astype(np.float32)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    search = exact_search(ids, vecs, chunk_bytes=4 * 500 * 5)  # 5 queries per chunk
    got_ids, got_scores = search(q, 20)
    full = q @ vecs.T
    for i in range(37):
        order = np.argsort(-full[i], kind="stable")[:20]
        assert got_ids[i].tolist() == ids[order].tolist()
        np.testing.assert_allclose(got_scores[i], full[i, order], rtol=1e-5)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32


def test_exact_search_pads_when_catalogue_is_small_and_breaks_ties_by_id() -> None:
    ids = np.array([7, 3, 5], dtype=np.int64)
    vecs = np.array([[1.0], [1.0], [2.0]], dtype=np.float32)
    got_ids, got_scores = exact_search(ids, vecs)(np.array([[1.0]], dtype=np.float32), 5)
    assert got_ids.tolist() == [[5, 3, 7, -1, -1]]
    assert got_scores[0, :3].tolist() == [2.0, 1.0, 1.0]
    assert np.isneginf(got_scores[0, 3:]).all()


# ---------------------------------------------------------------- evaluate


def _onehot_world(n_items: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Item i (1..n) has the one-hot vector e_{i-1}: an interest e_j + 0.1*e_k ranks j then k."""
    ids = np.arange(1, n_items + 1, dtype=np.int64)
    return ids, np.eye(n_items, dtype=np.float32)


def test_evaluate_merges_interests_and_keeps_seen_items() -> None:
    ids, vecs = _onehot_world()

    def encode(hist: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Interest k of a user points at its k-th history item (fixed K = 3, n_interests = length).
        b, _ = hist.shape
        out = np.zeros((b, 3, 6), dtype=np.float32)
        for i in range(b):
            for k in range(min(3, int(length[i]))):
                out[i, k, hist[i, k] - 1] = 1.0 - 0.1 * k
        return out, np.minimum(length, 3)

    users = [
        EvalUser(1, np.array([2]), np.array([2])),  # seen item is retrievable: hit at rank 0
        EvalUser(2, np.array([1, 4]), np.array([4, 6])),  # 4 comes from interest 2, at rank 1
        EvalUser(3, np.array([5, 3, 1, 2]), np.array([2])),  # item 2 is in hist beyond K=3: no hit
    ]
    res = evaluate(users, encode, exact_search(ids, vecs), top_n=2, maxlen=4, batch_size=2)
    # User 1: one interest -> ranked [2, (score 0 tie, smallest id) 1]: recall 1, ndcg 1.
    # User 2: ranked [1, 4]: recall 1/2, ndcg d(1) / (d(0) + d(1)).
    # User 3: ranked [5, 3]: nothing.
    assert res["users"] == 3
    assert res["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert res["hitrate@2"] == pytest.approx(2 / 3)
    assert res["ndcg@2"] == pytest.approx((1 + _d(1) / (_d(0) + _d(1)) + 0) / 3)
    assert res["avg_interests"] == pytest.approx((1 + 2 + 3) / 3)
    # Re-views: 2 (user 1, found), 4 (user 2, found), 2 (user 3, missed); new: 6 (user 2, missed).
    assert res["repeat_recall@2"] == pytest.approx(2 / 3)
    assert res["new_recall@2"] == 0.0
    assert res["repeat_share"] == pytest.approx(3 / 4)
    assert res["users_hist_1-4"] == 3 and res["users_hist_16+"] == 0
    assert res["recall@2_hist_1-4"] == pytest.approx(res["recall@2"])
    assert res["recall@2_hist_16+"] is None


def test_breakdown_buckets_by_history_length_and_splits_reviews() -> None:
    out = breakdown([1, 4, 5, 7, 8, 15, 16, 300], [1.0, 0.0, 0.5, 0.5, 0.2, 0.4, 0.1, 0.3], (3, 4), (1, 8), 50)
    assert [out[f"users_hist_{b}"] for b in ("1-4", "5-7", "8-15", "16+")] == [2, 2, 2, 2]
    assert out["recall@50_hist_1-4"] == pytest.approx(0.5)
    assert out["recall@50_hist_5-7"] == pytest.approx(0.5)
    assert out["recall@50_hist_8-15"] == pytest.approx(0.3)
    assert out["recall@50_hist_16+"] == pytest.approx(0.2)
    assert out["repeat_recall@50"] == pytest.approx(0.75)
    assert out["new_recall@50"] == pytest.approx(0.125)
    assert out["repeat_share"] == pytest.approx(4 / 12)
    empty = breakdown([2], [1.0], (0, 0), (1, 1), 20)
    assert empty["repeat_recall@20"] is None and empty["repeat_share"] == 0.0
    assert empty["recall@20_hist_5-7"] is None
    with pytest.raises(ValueError, match="history lengths"):
        breakdown([1, 2], [1.0], (0, 0), (0, 0), 20)


def test_evaluate_searches_only_valid_interests_in_one_call_per_batch() -> None:
    ids, vecs = _onehot_world()
    calls: list[int] = []

    def encode(hist: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(hist), 4, 6), dtype=np.float32)
        out[:, 1:, 0] = 100.0  # junk interests beyond n_interests would retrieve item 1
        out[np.arange(len(hist)), 0, hist[:, 0] - 1] = 1.0
        return out, np.ones(len(hist), dtype=np.int64)

    base = exact_search(ids, vecs)

    def search(q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(q))
        return base(q, n)

    users = [EvalUser(u, np.array([u + 1]), np.array([u + 1])) for u in range(5)]
    res = evaluate(users, encode, search, top_n=1, maxlen=3, batch_size=2)
    assert calls == [2, 2, 1]
    assert res["recall@1"] == 1.0


def test_evaluate_exclude_seen_scores_new_items_only() -> None:
    """As served by default: history items are neither ranked nor counted; all-re-view users are left out."""
    ids, vecs = _onehot_world()

    def encode(hist: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One interest: the history items strongly, then item 6, then item 5.
        out = np.zeros((len(hist), 1, 6), dtype=np.float32)
        for i in range(len(hist)):
            out[i, 0, hist[i, : length[i]] - 1] = 1.0
        out[:, 0, 5], out[:, 0, 4] = 0.5, 0.4
        return out, np.ones(len(hist), dtype=np.int64)

    users = [
        EvalUser(1, np.array([1, 2]), np.array([2, 5])),  # re-view 2 + new 5
        EvalUser(2, np.array([3]), np.array([3])),  # only a re-view
    ]
    kept = evaluate(users, encode, exact_search(ids, vecs), top_n=2, maxlen=3)
    # Seen kept: user 1 ranks [1, 2] -> 1 of 2; user 2 ranks [3, 6] -> 1 of 1.
    assert kept["users"] == 2 and kept["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    served = evaluate(users, encode, exact_search(ids, vecs), top_n=2, maxlen=3, exclude_seen=True)
    # User 1 ranks [6, 5] against {5}: a hit at rank 1; user 2 has no new item to find.
    assert served["users"] == 1 and served["users_all_seen"] == 1
    assert served["recall@2"] == 1.0
    assert served["ndcg@2"] == pytest.approx(_d(1) / _d(0))


def test_evaluate_rejects_empty_history() -> None:
    ids, vecs = _onehot_world()
    with pytest.raises(ValueError, match="empty history"):
        evaluate([EvalUser(1, np.array([], dtype=np.int64), np.array([1]))],
                 lambda h, n: (np.zeros((1, 1, 6), np.float32), np.ones(1, np.int64)),
                 exact_search(ids, vecs), top_n=2, maxlen=3)


# ---------------------------------------------------------------- most_popular


def test_most_popular_hand_computed() -> None:
    seqs = {1: np.array([3, 3, 2]), 2: np.array([3, 2, 5]), 3: np.array([4])}
    # Counts: 3 -> 3, 2 -> 2, then 4 and 5 tie at 1 (smaller id first).
    assert popular_items(seqs, 6, 10).tolist() == [3, 2, 4, 5]
    users = [EvalUser(9, np.array([1]), np.array([2, 5])), EvalUser(10, np.array([1]), np.array([1]))]
    res = most_popular(seqs, 6, 3, users)
    assert res["users"] == 2
    assert res["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    assert res["hitrate@3"] == pytest.approx(1 / 2)
    assert res["ndcg@3"] == pytest.approx((_d(1) / (_d(0) + _d(1))) / 2)
