"""The load generator's per-second tail summary (pure)."""

from __future__ import annotations

from producers.traffic import _by_second


def test_percentile_per_second_of_sending() -> None:
    points = [(0, 10), (500, 30), (999, 20), (2100, 7), (2900, 9)]
    assert _by_second(points, 50) == [20.0, None, 8.0]
    assert _by_second(points, 100) == [30.0, None, 9.0]
    assert _by_second([], 99) == []
