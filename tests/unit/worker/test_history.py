"""User history state: bounded, replay-safe, partition-scoped, changelog round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mind_recall.wire import Click
from worker import history
from worker.history import HistoryState


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


# ---- the columnar store: hash growth, blocks, deletion, widening, wire format ----------------------


@pytest.fixture(params=[False, True], ids=["blocks16k", "blocks8"])
def small_blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Also run with 8-row blocks, so that a few hundred users span many blocks."""
    if request.param:
        monkeypatch.setattr(history, "_SHIFT", 3)
        monkeypatch.setattr(history, "_BLOCK", 8)
        monkeypatch.setattr(history, "_LOW", 7)
    return bool(request.param)


def _old_encoding(user: int, items: list[int], offset: int, ts: int) -> bytes:
    """The changelog value as the dict-based HistoryState wrote it (json.dumps of a dict, compact)."""
    return json.dumps({"user_id": user, "items": items, "offset": offset, "ts": ts}, separators=(",", ":")).encode()


def test_changelog_value_is_byte_identical_to_the_old_format() -> None:
    s = HistoryState(maxlen=3)
    for off, item in enumerate([5, 6, 7, 2**40]):
        s.apply(2, 100 + off, Click(2**62, item, 1_700_000_000_000 + off))
    [(p, k, v)] = s.drain_dirty()
    assert (p, k) == (2, str(2**62).encode())
    assert v == _old_encoding(2**62, [6, 7, 2**40], 103, 1_700_000_000_003)


def test_ring_wraps_many_times_oldest_first() -> None:
    s = HistoryState(maxlen=5)
    for off in range(23):
        s.apply(0, off, Click(1, off + 1, off))
        got = s.get(1)
        assert got is not None and got.dtype == np.int64
        assert got.tolist() == list(range(max(1, off - 3), off + 2))


def test_many_users_grow_the_hash_and_the_blocks(small_blocks: bool) -> None:
    s = HistoryState(maxlen=4)
    rng = np.random.default_rng(1)
    users = rng.choice(2**63 - 1, size=3000, replace=False).tolist() + list(range(1000))  # random and dense ids
    for i, u in enumerate(users):
        for c in range(3):
            assert s.apply(u % 4, i * 3 + c, Click(u, i + c + 1, i))
    assert s.users() == len(users) and s.partitions() == {0, 1, 2, 3}
    assert len(s._slots) >= 2 * len(users)  # load factor <= 1/2
    for i, u in enumerate(users):
        got = s.get(u)
        assert got is not None and got.tolist() == [i + 1, i + 2, i + 3]
    assert s.get(2**63 - 1) is None and s.get(-5) is None
    if small_blocks:
        assert len(s._items) == -(-len(users) // 8)


def test_ids_beyond_int32_widen_the_columns() -> None:
    s = HistoryState(maxlen=3)
    s.apply(0, 0, Click(1, 7, 0))
    assert s._icode == "i" and s._codes["off"] == "i" and s._codes["part"] == "H"
    s.apply(70_000, 2**40, Click(2**63 - 1, 2**63 - 1, 2**70))  # partition > uint16, offset > int32, ts clamped
    s.apply(0, 1, Click(1, 2**31, 1))
    assert s._icode == "q" and s._items[0].typecode == "q" and s._codes["off"] == "q" and s._codes["part"] == "i"
    assert s.get(1).tolist() == [7, 2**31] and s.get(2**63 - 1).tolist() == [2**63 - 1]
    assert not s.apply(70_000, 2**40, Click(2**63 - 1, 1, 0))  # the wide offset is compared exactly
    records = {k: json.loads(v) for _p, k, v in s.drain_dirty()}
    assert records[str(2**63 - 1).encode()] == {
        "user_id": 2**63 - 1,
        "items": [2**63 - 1],
        "offset": 2**40,
        "ts": 2**63 - 1,
    }
    r = HistoryState(maxlen=3)
    r.restore_entry(5, b"9", _old_encoding(9, [-(2**40), 1], 3, -1))  # whatever the changelog holds (int64)
    assert r.get(9).tolist() == [-(2**40), 1]


def test_restore_skips_values_outside_int64_and_other_garbage(caplog: pytest.LogCaptureFixture) -> None:
    s = HistoryState(maxlen=3)
    bad = [
        _old_encoding(1, [2**64], 0, 0),
        _old_encoding(2**63, [1], 0, 0),
        _old_encoding(1, [1], -(2**63) - 1, 0),
        b'{"user_id": 1, "items": [1], "ts": 1e999}',  # inf
        b'{"user_id": 1}',
        b'{"user_id": 1, "items": 5}',
        b"[1, 2]",
        b"\xff\xfe",
        b"[" * 100_000,
    ]
    for v in bad:
        s.restore_entry(0, b"1", v)
    assert s.users() == 0 and s.get(1) is None
    assert sum("skipping a bad changelog record" in r.message for r in caplog.records) == len(bad)
    s.restore_entry(0, b"1", b'{"user_id": 1, "items": [4, 5, 6, 7]}')  # offset and ts default, maxlen applies
    assert s.get(1).tolist() == [5, 6, 7] and s.apply(0, 0, Click(1, 8, 0))
    s.restore_entry(0, b"not a number", None)  # a tombstone without a usable key: nothing to delete
    s.restore_entry(0, str(2**70).encode(), None)
    assert s.users() == 1


def test_tombstones_keep_every_other_user_reachable(small_blocks: bool) -> None:
    s = HistoryState(maxlen=2)
    users = list(range(0, 4000, 3))
    for u in users:
        s.restore_entry(u % 2, str(u).encode(), _old_encoding(u, [u + 1, u + 2], u, 0))
    rng = np.random.default_rng(2)
    gone = set(rng.choice(users, size=len(users) // 2, replace=False).tolist())
    for u in gone:
        s.restore_entry(u % 2, str(u).encode(), None)
        s.restore_entry(u % 2, str(u).encode(), None)  # twice: the second finds nothing
    for u in users:
        got = s.get(u)
        assert (got is None) if u in gone else (got is not None and got.tolist() == [u + 1, u + 2])
    assert s.users() == len(users) - len(gone)
    s.restore_entry(1, b"3", b'{"user_id": 3, "items": [9], "offset": 1}')
    assert s.get(3).tolist() == [9]


def test_tombstone_of_another_partition_leaves_the_user() -> None:
    s = HistoryState(maxlen=2)
    s.apply(1, 0, Click(4, 40, 0))
    s.restore_entry(0, b"4", None)
    assert s.get(4).tolist() == [40]


def test_a_user_in_another_partition_starts_afresh_there() -> None:
    s = HistoryState(maxlen=3)
    s.apply(0, 10, Click(1, 11, 0))
    assert s.apply(1, 3, Click(1, 12, 0))  # offsets of another partition are not compared
    assert s.get(1).tolist() == [12] and s.partitions() == {0, 1} and s.users() == 1
    assert [(p, json.loads(v)["items"]) for p, _k, v in s.drain_dirty()] == [(1, [12])]
    s.drop_partitions([0])
    assert s.get(1).tolist() == [12]


def test_drop_partitions_compacts_and_shrinks(small_blocks: bool) -> None:
    s = HistoryState(maxlen=3)
    for u in range(5000):
        s.apply(u % 5, u, Click(u, u + 1, 0))
    full, slots = s.nbytes(), len(s._slots)
    s.drain_dirty()
    s.apply(0, 10**6, Click(0, 99, 0))  # dirty in a partition about to go
    s.drop_partitions([0, 2, 3, 7])
    assert s.partitions() == {1, 4} and s.users() == 2000 and s.drain_dirty() == []
    for u in range(5000):
        got = s.get(u)
        assert (got is not None and got.tolist() == [u + 1]) if u % 5 in (1, 4) else got is None
    assert len(s._slots) < slots
    if small_blocks:  # (one block, up to 2^14 rows, is always kept)
        assert s.nbytes() < full * 0.6
    s.drop_partitions([1, 4])
    assert s.users() == 0 and s.partitions() == set() and s.get(1) is None
    for u in range(100):  # usable again after dropping everything
        s.apply(2, u, Click(u, 5, 0))
    assert s.users() == 100 and s.get(99).tolist() == [5]


def test_matches_a_dict_model_under_random_operations(small_blocks: bool) -> None:
    """Random applies, replays, restores, tombstones, drops and drains against the dict-based semantics."""
    rng = random.Random(3)
    s, maxlen = HistoryState(maxlen=4), 4
    model: dict[int, tuple[int, list[int], int, int]] = {}  # user -> (partition, items, offset, ts)
    dirty: dict[int, set[int]] = {}
    offsets = dict.fromkeys(range(4), 0)
    for step in range(6000):
        op, u = rng.random(), rng.randrange(300) * 2**33 + rng.randrange(3)
        p = u % 4
        if op < 0.6:
            offsets[p] += 1
            off = offsets[p] - rng.choice([0, 0, 0, 1, 5])  # some replays
            item, ts = rng.randrange(1, 2**32), rng.randrange(2**41)
            h = model.get(u)
            fresh = h is None or h[0] != p
            expect = fresh or off > h[2]
            assert s.apply(p, off, Click(u, item, ts)) == expect
            if expect:
                items = ([] if fresh else h[1]) + [item]
                model[u] = (p, items[-maxlen:], off, ts)
                dirty.setdefault(p, set()).add(u)
        elif op < 0.75:
            items = [rng.randrange(1, 2**20) for _ in range(rng.randrange(7))]
            s.restore_entry(p, str(u).encode(), _old_encoding(u, items, step, step))
            model[u] = (p, items[-maxlen:], step, step)
        elif op < 0.85:
            s.restore_entry(p, str(u).encode(), None)
            if u in model and model[u][0] == p:
                del model[u]
        elif op < 0.86:
            gone = {rng.randrange(4)}
            s.drop_partitions(gone)
            model = {k: v for k, v in model.items() if v[0] not in gone}
            for g in gone:
                dirty.pop(g, None)
        elif op < 0.9:
            want = sorted(
                (q, str(k).encode(), _old_encoding(k, model[k][1], model[k][2], model[k][3]))
                for q, us in dirty.items()
                for k in us
                if k in model and model[k][0] == q
            )
            assert sorted(s.drain_dirty()) == want
            dirty.clear()
        else:
            got = s.get(u)
            h = model.get(u)
            assert (None if h is None or not h[1] else h[1]) == (None if got is None else got.tolist())
        assert s.users() == len(model)
    for u, (_p, items, _o, _t) in model.items():
        got = s.get(u)
        assert (None if got is None else got.tolist()) == (items or None)


def test_104_bytes_per_row_and_under_128_per_user_at_maxlen_20() -> None:
    s = HistoryState(maxlen=20)
    n = 3 * history._BLOCK  # full blocks: no rows allocated ahead
    for u in range(n):
        s.restore_entry(u % 4, str(u).encode(), _old_encoding(u, list(range(1, 21)), u, u))
    slots = len(s._slots) * 4
    assert (s.nbytes() - slots) / s._cap == 8 + 2 + 20 * 4 + 4 + 8 + 1 + 1  # key part items off ts len head
    assert s.nbytes() / s.users() < 128


def test_get_returns_a_copy() -> None:
    s = HistoryState(maxlen=2)
    for off in range(3):
        s.apply(0, off, Click(1, off + 1, 0))
    got = s.get(1)
    got[:] = 0
    assert s.get(1).tolist() == [2, 3]
