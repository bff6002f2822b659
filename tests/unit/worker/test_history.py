"""User history state: bounded, replay-safe, partition-scoped, changelog round trip."""

from __future__ import annotations

from worker.history import HistoryState
from worker.requests import Click


def test_keeps_last_maxlen_and_skips_replayed_offsets() -> None:
    s = HistoryState(maxlen=3)
    for off, item in enumerate([1, 2, 3, 4]):
        assert s.apply(0, off, Click(7, item, off))
    assert s.get(7).tolist() == [2, 3, 4]
    assert not s.apply(0, 2, Click(7, 99, 0))  # a replay after a crash before the commit
    assert s.get(7).tolist() == [2, 3, 4]
    assert s.get(8) is None


def test_changelog_round_trip_restores_state_and_offsets() -> None:
    s = HistoryState(maxlen=4)
    s.apply(1, 10, Click(5, 50, 1))
    s.apply(1, 11, Click(5, 51, 2))
    s.apply(2, 3, Click(6, 60, 3))
    records = s.drain_dirty()
    assert sorted((p, k) for p, k, _ in records) == [(1, b"5"), (2, b"6")]
    assert s.drain_dirty() == []
    r = HistoryState(maxlen=4)
    for p, k, v in records:
        r.restore_entry(p, k, v)
    assert r.get(5).tolist() == [50, 51] and r.get(6).tolist() == [60]
    assert not r.apply(1, 11, Click(5, 51, 2))  # offset remembered across the restore
    assert r.apply(1, 12, Click(5, 52, 4)) and r.get(5).tolist() == [50, 51, 52]


def test_restore_later_entry_wins_tombstone_and_garbage() -> None:
    s = HistoryState(maxlen=4)
    s.restore_entry(0, b"1", b'{"user_id": 1, "items": [1], "offset": 0}')
    s.restore_entry(0, b"1", b'{"user_id": 1, "items": [1, 2], "offset": 1}')
    s.restore_entry(0, b"2", b"garbage")
    assert s.get(1).tolist() == [1, 2] and s.get(2) is None
    s.restore_entry(0, b"1", None)
    assert s.get(1) is None


def test_drop_partitions_forgets_their_users_only() -> None:
    s = HistoryState(maxlen=4)
    s.apply(0, 0, Click(1, 10, 0))
    s.apply(1, 0, Click(2, 20, 0))
    s.drop_partitions([0])
    assert s.get(1) is None and s.get(2).tolist() == [20]
    assert s.partitions() == {1} and s.users() == 1
