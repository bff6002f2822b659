"""model/merge.py: the per-user merge shared by evaluation and the worker."""

from __future__ import annotations

import numpy as np
import pytest

from model.merge import Candidate, merge, merge_batch


def _ids(cands: list[Candidate]) -> list[int]:
    return [c.item_id for c in cands]


def test_dedupe_keeps_best_score_and_its_interest() -> None:
    ids = np.array([[1, 2, 3], [2, 4, 1]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]], dtype=np.float32)
    out = merge(ids, scores, top_k=10)
    assert _ids(out) == [1, 2, 4, 3]
    best = {c.item_id: (round(c.score, 6), c.interest) for c in out}
    assert best[2] == (0.8, 1)  # 0.8 from interest 1 beats 0.5 from interest 0
    assert best[1] == (0.9, 0)
    assert all(isinstance(c, Candidate) and isinstance(c.item_id, int) for c in out)


def test_order_by_score_then_item_id() -> None:
    ids = np.array([[9, 5, 7], [3, 8, 6]])
    scores = np.array([[0.5, 0.5, 0.9], [0.5, 0.1, 0.9]], dtype=np.float32)
    assert _ids(merge(ids, scores, top_k=10)) == [6, 7, 3, 5, 9, 8]


def test_exclude_removes_items_before_the_cut() -> None:
    ids = np.array([[1, 2, 3, 4]])
    scores = np.array([[4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    assert _ids(merge(ids, scores, top_k=2, exclude=[1, 3])) == [2, 4]
    assert _ids(merge(ids, scores, top_k=2, exclude=iter([2]))) == [1, 3]  # any iterable


def test_n_interests_uses_only_the_first_rows() -> None:
    ids = np.array([[1, 2], [3, 4], [5, 6]])
    scores = np.array([[0.1, 0.0], [0.9, 0.8], [1.0, 1.0]], dtype=np.float32)
    assert _ids(merge(ids, scores, top_k=10, n_interests=2)) == [3, 4, 1, 2]
    assert _ids(merge(ids, scores, top_k=10, n_interests=1)) == [1, 2]
    assert _ids(merge(ids, scores, top_k=10, n_interests=99)) == [5, 6, 3, 4, 1, 2]
    assert merge(ids, scores, top_k=10, n_interests=0) == []


def test_padding_minus_one_is_ignored() -> None:
    ids = np.array([[4, -1, -1], [2, 4, -1]])
    scores = np.array([[0.3, 9.0, 9.0], [0.5, 0.1, -np.inf]], dtype=np.float32)
    out = merge(ids, scores, top_k=5)
    assert _ids(out) == [2, 4]
    assert out[1].score == pytest.approx(0.3) and out[1].interest == 0


def test_top_k_cut_and_non_positive_top_k() -> None:
    ids = np.arange(1, 21).reshape(2, 10)
    scores = np.linspace(1.0, 0.0, 20, dtype=np.float32).reshape(2, 10)
    out = merge(ids, scores, top_k=7)
    assert _ids(out) == list(range(1, 8))
    assert merge(ids, scores, top_k=0) == []


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        merge(np.array([[1, 2]]), np.array([[0.1]]), top_k=2)
    with pytest.raises(ValueError):
        merge(np.array([1, 2]), np.array([0.1, 0.2]), top_k=2)


@pytest.mark.parametrize("seed", range(20))
def test_merge_batch_equals_merge_per_user(seed: int) -> None:
    """Random batches with duplicate ids across interests, equal scores, padding, excluded ids,
    per-user top_k (0 included) and n_interests: batching users together changes no user's list
    (merge() is the one-user call; the cases above pin down what a list must be)."""
    rng = np.random.default_rng(seed)
    b, k, n = int(rng.integers(1, 12)), int(rng.integers(1, 5)), int(rng.integers(1, 30))
    ids = rng.integers(1, 40, (b, k, n))  # few distinct ids: many duplicates
    ids[rng.random((b, k, n)) < 0.15] = -1
    if seed % 2:
        scores = rng.integers(-5, 5, (b, k, n)).astype(np.float32) / 4  # many ties
    else:
        scores = rng.standard_normal((b, k, n)).astype(np.float32)  # no ties except duplicate ids
    top_k = rng.integers(0, 25, b)
    n_int = rng.integers(0, k + 1, b)
    exclude = [rng.integers(1, 40, int(rng.integers(0, 8))).tolist() for _ in range(b)]
    got = merge_batch(ids, scores, top_k, n_int, exclude)
    want = [merge(ids[x], scores[x], int(top_k[x]), int(n_int[x]), exclude=exclude[x]) for x in range(b)]
    assert got == want


def test_merge_batch_huge_ids_and_no_exclude() -> None:
    ids = np.array([[[2**62, 5, -1]], [[5, 2**62 + 1, 7]]])
    scores = np.array([[[0.5, 0.9, 0.0]], [[0.1, 0.2, 0.3]]], dtype=np.float32)
    got = merge_batch(ids, scores, [2, 3])
    assert [_ids(c) for c in got] == [[5, 2**62], [7, 2**62 + 1, 5]]
    with pytest.raises(ValueError, match=r"\[B, K, N\]"):
        merge_batch(ids[0], scores[0], [1])
