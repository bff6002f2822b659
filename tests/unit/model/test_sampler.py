"""Log-uniform sampler: never padding, no duplicates, logQ equal to the empirical inclusion rate."""

from __future__ import annotations

import numpy as np
import pytest

from model.sampler import LogUniformSampler


def _popularity(n: int = 200, seed: int = 0) -> np.ndarray:
    pop = np.random.default_rng(seed).zipf(1.5, n).astype(np.int64)
    pop[0] = 10**6  # the padding row's count must be ignored, however large
    return pop


def test_never_padding_never_duplicates() -> None:
    s = LogUniformSampler(_popularity(), seed=1)
    for n in (1, 10, 60, 99):
        neg = s.draw(n)
        assert neg.ids.size == n
        assert np.unique(neg.ids).size == n
        assert (neg.ids >= 1).all() and (neg.ids < 200).all()
        assert neg.log_q.shape == (n,) and (neg.log_q <= 0).all()


def test_ranking_follows_popularity() -> None:
    pop = _popularity()
    s = LogUniformSampler(pop, seed=1)
    assert 0 not in s.ranked_ids
    counts = pop[s.ranked_ids]
    assert (np.diff(counts) <= 0).all()
    assert s.prob[0] == 0.0 and s.prob.sum() == pytest.approx(1.0)
    # more popular item -> higher sampling probability
    assert s.prob[s.ranked_ids[0]] > s.prob[s.ranked_ids[-1]]


def test_log_q_matches_empirical_inclusion_rate() -> None:
    """exp(logQ) is the expected count of an id in the tries it took: check it by simulation."""
    s = LogUniformSampler(_popularity(300), seed=2)
    n, rounds = 20, 4000
    hits = np.zeros(300)
    expected = np.zeros(300)
    for _ in range(rounds):
        neg = s.draw(n)
        hits[neg.ids] += 1
        q_all = np.exp(s.log_expected_count(np.arange(1, 300), neg.tries))
        expected[1:] += q_all
    # Items with enough mass for a tight estimate: relative error of the mean inclusion rate.
    top = s.ranked_ids[:40]
    np.testing.assert_allclose(hits[top] / rounds, expected[top] / rounds, rtol=0.1)
    assert hits[0] == 0


def test_full_catalogue_when_n_is_large() -> None:
    s = LogUniformSampler(_popularity(50), seed=3)
    neg = s.draw(30)  # >= half of the 49 real items: exact softmax over all of them
    assert neg.tries == 0 and sorted(neg.ids.tolist()) == list(range(1, 50))
    assert (neg.log_q == 0).all()


def test_deterministic_for_a_seed_and_state_roundtrip() -> None:
    a, b = LogUniformSampler(_popularity(), seed=7), LogUniformSampler(_popularity(), seed=7)
    assert np.array_equal(a.draw(10).ids, b.draw(10).ids)
    state = a.state()
    x = a.draw(10).ids
    a.set_state(state)
    assert np.array_equal(a.draw(10).ids, x)
    with pytest.raises(ValueError):
        a.draw(0)
