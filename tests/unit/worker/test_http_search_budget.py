"""The pieces the HTTP API bounds a recall with: chunked_search (calls of at most ``chunk`` queries, in order,
stopped by a deadline) and RecallEngine.search_size (the first search's vectors x hits, as recall sends it)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from model.evaluation import exact_search
from worker.recall import ArrayItems, Query, RecallEngine, SearchDeadline, chunked_search


class _Tower:
    model_version, dim, k, maxlen = "v", 8, 3, 20

    def encode(self, hv: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(int(lengths.sum()))
        return rng.standard_normal((hv.shape[0], self.k, self.dim)).astype(np.float32), np.full(hv.shape[0], self.k)


def _catalogue() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return np.arange(1, 301, dtype=np.int64), rng.standard_normal((300, 8)).astype(np.float32)


def test_chunked_search_answers_as_one_call_in_chunks() -> None:
    ids, vecs = _catalogue()
    search = exact_search(ids, vecs)
    sizes: list[int] = []

    def counted(q: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(len(q))
        return search(q, topn)

    q = np.random.default_rng(1).standard_normal((70, 8)).astype(np.float32)
    got_ids, got_scores = chunked_search(counted, 32, lambda: None)(q, 15)
    want_ids, want_scores = search(q, 15)
    assert sizes == [32, 32, 6]
    np.testing.assert_array_equal(got_ids, want_ids)
    # float32 dot products of a 32-row and a 70-row matmul may differ in the last bit (BLAS blocking)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)


def test_chunked_search_stops_at_the_deadline() -> None:
    ids, vecs = _catalogue()
    search = exact_search(ids, vecs)
    sizes: list[int] = []

    def counted(q: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(len(q))
        return search(q, topn)

    q = np.zeros((100, 8), np.float32)
    # the deadline as read before each chunk: ahead twice, then passed
    ends = iter([time.monotonic() + 3600] * 2 + [time.monotonic() - 1] * 10)
    with pytest.raises(SearchDeadline, match="after 20 of 100 queries"):
        chunked_search(counted, 10, lambda: next(ends))(q, 5)
    assert sizes == [10, 10]  # the rest were never sent


def test_search_size_is_what_recall_sends() -> None:
    ids, vecs = _catalogue()
    seen_calls: list[tuple[int, int]] = []
    search = exact_search(ids, vecs)

    def recorded(q: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
        seen_calls.append((len(q), topn))
        return search(q, topn)

    for exclude_seen, min_topn in ((True, 0), (False, 0), (True, 200)):
        engine = RecallEngine(_Tower(), recorded, ArrayItems(ids, vecs, "v"), ids[:50],
                              exclude_seen=exclude_seen, min_topn=min_topn)
        queries = [Query(0, 10, np.arange(1, 40)), Query(1, 25, np.array([5, 5, 6])), Query(2, 5, np.arange(1, 3))]
        seen_calls.clear()
        engine.recall(queries)
        assert engine.search_size(queries) == seen_calls[0], (exclude_seen, min_topn)
    assert RecallEngine(_Tower(), search, ArrayItems(ids, vecs, "v"), ids[:50]).search_size([]) == (0, 0)
