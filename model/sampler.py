"""Log-uniform negative sampler over popularity-ranked item ids, for sampled softmax.

Items are ranked by training popularity (rank 0 = most popular; ties by id) and rank ``r`` is drawn
with probability ``P(r) = log((r + 2) / (r + 1)) / log(N + 1)`` (TensorFlow's log-uniform / Zipf
sampler), so popular items are negatives more often. Padding (id 0) is never in the ranking.

Samples are unique within one draw (``draw(n)``): candidates are drawn with replacement until ``n``
distinct ids have been seen, and the logQ correction uses the *expected count* of each id in that
process, ``Q(y) = 1 - (1 - P(y)) ** tries`` (as TF's ``unique=True`` samplers do). With ``n`` at or
above half the catalogue the sampler returns every item with ``Q = 1``: an exact full softmax, which
is then also cheaper than rejection sampling.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Negatives(NamedTuple):
    ids: np.ndarray  # int64 [n], unique, never 0
    log_q: np.ndarray  # float32 [n], log expected count of each id
    tries: int  # draws with replacement it took (0: every item, no sampling)


class LogUniformSampler:
    """Shared negatives for one training step, drawn from one numpy Generator created once."""

    def __init__(self, popularity: np.ndarray, seed: int | np.random.Generator = 0) -> None:
        """``popularity[i]`` = training count of item id ``i`` (index 0, the padding, is ignored)."""
        popularity = np.asarray(popularity)
        if popularity.ndim != 1 or popularity.size < 2:
            raise ValueError("popularity must be a 1-D count per item id with at least one real item")
        ids = np.arange(1, popularity.size, dtype=np.int64)
        # Most popular first; a stable sort keeps ties in id order, so the ranking is deterministic.
        self.ranked_ids = ids[np.argsort(-popularity[1:], kind="stable")]
        self.n_items = int(self.ranked_ids.size)
        ranks = np.arange(self.n_items, dtype=np.float64)
        self.rank_prob = (np.log(ranks + 2.0) - np.log(ranks + 1.0)) / np.log(self.n_items + 1.0)
        # P by item id (0 for padding), for the logQ of the positives.
        self.prob = np.zeros(popularity.size, dtype=np.float64)
        self.prob[self.ranked_ids] = self.rank_prob
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def _ranks(self, size: int) -> np.ndarray:
        # Inverse CDF: CDF(r) = log(r + 2) / log(N + 1).
        u = self.rng.random(size)
        r = np.floor(np.exp(u * np.log(self.n_items + 1.0))).astype(np.int64) - 1
        return np.clip(r, 0, self.n_items - 1)

    def full(self, n: int) -> bool:
        """Whether ``draw(n)`` returns the whole catalogue (exact softmax) instead of sampling."""
        return 2 * n >= self.n_items

    def draw(self, n: int) -> Negatives:
        """``n`` distinct negative ids (never padding) with their log expected counts."""
        if n <= 0:
            raise ValueError(f"need a positive number of samples, got {n}")
        if self.full(n):
            ids = np.sort(self.ranked_ids)
            return Negatives(ids, np.zeros(ids.size, dtype=np.float32), 0)
        drawn = np.empty(0, dtype=np.int64)
        while True:
            drawn = np.concatenate([drawn, self._ranks(max(2 * n, 64))])
            _, first = np.unique(drawn, return_index=True)
            if first.size >= n:
                first.sort()
                tries = int(first[n - 1]) + 1
                ranks = drawn[first[:n]]
                break
        ids = self.ranked_ids[ranks]
        return Negatives(ids, self.log_expected_count(ids, tries), tries)

    def log_expected_count(self, ids: np.ndarray, tries: int) -> np.ndarray:
        """log of the expected number of times each id appears in ``tries`` draws (0 when tries=0:
        the full-catalogue case, where every item is present exactly once)."""
        if tries == 0:
            return np.zeros(np.shape(ids), dtype=np.float32)
        p = self.prob[np.asarray(ids, dtype=np.int64)]
        q = -np.expm1(tries * np.log1p(-p))
        return np.log(np.maximum(q, 1e-30)).astype(np.float32)

    def state(self) -> dict:
        """The generator state, for checkpoints (so a resumed run draws what the full run drew)."""
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
