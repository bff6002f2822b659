"""Per-user click history: an in-memory cache backed by a compacted changelog topic.

As in Kafka Streams: the state of clicks partition p lives in changelog partition p (same key,
same partition count); the worker writes a user's new state to the changelog before it commits
the click offsets, and on assignment of clicks partition p it replays changelog partition p.
Each changelog entry carries the clicks offset it reflects, so a click replayed after a crash
(changelog written, offset not yet committed) is recognised and not appended twice.

Memory: one row per user in columnar blocks (no Python object per user), found through an
open-addressing hash of int32 slots; ~114 bytes per user at maxlen 20 (docs/recall.md).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from mind_recall.wire import Click, user_key
from worker.kafka_io import GroupConsumer, TopicPartition

log = logging.getLogger(__name__)

_SHIFT = 14  # rows per block: 2^14; a full block is never copied again, so growth neither stalls nor doubles memory
_BLOCK = 1 << _SHIFT
_LOW = _BLOCK - 1
_FIRST_ROWS = 64  # the first block starts this small and doubles up to _BLOCK rows
_MIN_BITS = 6
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: 2^64 / golden ratio
_M64 = (1 << 64) - 1
_RANGE = {"B": (0, 1 << 8), "H": (0, 1 << 16), "i": (-(1 << 31), 1 << 31), "q": (-(1 << 63), 1 << 63)}
_INT64 = _RANGE["q"]
_TS_LO, _TS_HI = _INT64
_WIDER = {"B": "H", "H": "i", "i": "q"}
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # what json.dumps(..., separators=...) builds on every call


def _zeros(code: str, n: int) -> array:
    return array(code, [0]) * n


def _np(block: array) -> np.ndarray:
    """A writable numpy view of an array block (blocks are never resized, so the view stays valid)."""
    return np.frombuffer(block, dtype=block.typecode)


class HistoryState:
    """Histories of the users in the clicks partitions this worker owns (last ``maxlen`` items each).

    A row per user: key, partition, items (a ring of ``maxlen``), ring length and head, the clicks offset
    of the newest click applied (-1: none) and its ts. Columns narrow where values allow (items and
    offsets int32, partition uint16) and widen for the whole table the first time a value does not fit.
    Rows live in fixed blocks and stay dense: a deleted row is filled by the last one, a dropped
    partition is compacted away. A user is in one partition: a click or entry for it in another
    partition starts its history there afresh (histories are per partition, as the changelog is).
    Not thread-safe: the worker's loop thread is its only user.
    """

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self.maxlen = maxlen
        ring = "B" if maxlen < 1 << 8 else "H" if maxlen < 1 << 16 else "i"
        self._codes = {"key": "q", "part": "H", "off": "i", "ts": "q", "len": ring, "head": ring}
        self._cols: dict[str, list[array]] = {name: [] for name in self._codes}
        self._key, self._part, self._off = self._cols["key"], self._cols["part"], self._cols["off"]
        self._ts, self._len, self._head = self._cols["ts"], self._cols["len"], self._cols["head"]
        self._items: list[array] = []  # row r's ring: items[r >> _SHIFT][(r & _LOW) * maxlen :][:maxlen]
        self._icode = "i"
        self._item_range = _RANGE["i"]
        self._n = 0  # rows in use: 0 .. n-1
        self._cap = 0  # rows allocated
        self._seed = secrets.randbits(64)  # ids are client input: unknown seed, no crafted probe chains
        self._slots = _zeros("i", 1 << _MIN_BITS)  # row + 1; 0: empty
        self._bits, self._hshift = _MIN_BITS, 64 - _MIN_BITS
        self._off_range = _RANGE["i"]
        self._counts: dict[int, int] = {}  # partition held -> its users
        self._dirty: dict[int, set[int]] = {}  # partition -> users changed since drain

    # ---- public API -------------------------------------------------------------------------------

    def apply(self, partition: int, offset: int, click: Click) -> bool:
        """Append a click; False if this offset was already applied (a replay)."""
        user, shift, low = click.user_id, _SHIFT, _LOW
        slots, keys = self._slots, self._key
        i, mask = (((user ^ self._seed) * _GOLDEN) & _M64) >> self._hshift, len(slots) - 1
        while True:  # _probe, inlined: this is the worker's per-click path
            s = slots[i]
            if not s:
                r = self._new_row(i, user, partition)
                break
            r = s - 1
            if keys[r >> shift][r & low] == user:
                if self._part[r >> shift][r & low] != partition:
                    self._move(r, partition)
                elif offset <= self._off[r >> shift][r & low]:
                    return False
                break
            i = (i + 1) & mask
        b, j = r >> shift, r & low
        item = click.item_id
        lo, hi = self._item_range
        if not lo <= item < hi:
            self._widen_items(item)
        lens, m = self._len[b], self.maxlen
        n = lens[j]
        if n < m:
            self._items[b][j * m + n] = item
            lens[j] = n + 1
        else:  # full: overwrite the oldest
            heads = self._head[b]
            h = heads[j]
            self._items[b][j * m + h] = item
            heads[j] = h + 1 if h + 1 < m else 0
        lo, hi = self._off_range
        if not lo <= offset < hi:
            self._widen("off", offset)
        self._off[b][j] = offset
        ts = click.ts
        self._ts[b][j] = (
            ts if _TS_LO <= ts < _TS_HI else min(max(ts, _TS_LO), _TS_HI - 1)
        )  # decode bounds ts below only
        dirty = self._dirty.get(partition)
        if dirty is None:
            dirty = self._dirty[partition] = set()
        dirty.add(user)
        return True

    def get(self, user_id: int) -> np.ndarray | None:
        """The user's last ``maxlen`` items oldest first (int64), or None."""
        _slot, r = self._probe(user_id)
        return None if r < 0 else self._history(r)

    def drain_dirty(self) -> list[tuple[int, bytes, bytes]]:
        """Changelog records (partition, key, value) for every user changed since the last drain."""
        out = []
        m, probe, parts, offs, tss = self.maxlen, self._probe, self._part, self._off, self._ts
        for p, users in self._dirty.items():
            for u in users:
                _slot, r = probe(u)
                if r < 0:
                    continue
                b, j = r >> _SHIFT, r & _LOW
                if parts[b][j] == p:
                    n, h = self._len[b][j], self._head[b][j]
                    row = self._items[b][j * m : j * m + n].tolist()
                    items = row[h:] + row[:h] if h else row
                    out.append((p, user_key(u), encode_entry(u, items, offs[b][j], tss[b][j])))
        self._dirty.clear()
        return out

    def restore_entry(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record (later records win; a null value deletes the user)."""
        try:
            user = int(key) if key is not None else None
        except ValueError:
            user = None
        if value is None:
            if user is not None and _INT64[0] <= user < _INT64[1]:
                slot, r = self._probe(user)
                if r >= 0 and self._part[r >> _SHIFT][r & _LOW] == partition:
                    self._delete(slot, r)
            return
        try:
            obj = json.loads(value)
            user = int(obj["user_id"])
            items = [int(i) for i in obj["items"]][-self.maxlen :]
            offset, ts = int(obj.get("offset", -1)), int(obj.get("ts", 0))
            array("q", (user, offset, ts))  # OverflowError unless all are int64
            try:
                row = array(self._icode, items)
            except OverflowError:  # beyond int32: the items column widens, unless beyond int64 (bad)
                row = array("q", items)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            log.warning("history: skipping a bad changelog record in partition %d: %s", partition, e)
            return
        slot, r = self._probe(user)
        if r < 0:
            r = self._new_row(slot, user, partition)
        elif self._part[r >> _SHIFT][r & _LOW] != partition:
            self._move(r, partition)
        b, j = r >> _SHIFT, r & _LOW
        if row.typecode != self._icode:
            self._widen_items(min(items) if min(items) < 0 else max(items))
        self._items[b][j * self.maxlen : j * self.maxlen + len(row)] = row
        self._len[b][j], self._head[b][j] = len(items), 0
        self._put("off", b, j, offset)
        self._ts[b][j] = ts

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget these partitions' users: the rows left are compacted and the hash sized to them."""
        gone = set(partitions)
        for p in gone:
            self._dirty.pop(p, None)
        held = [p for p in gone if self._counts.pop(p, 0)]
        if not held:
            return
        keep = ~np.isin(self._column("part"), held)
        n = int(keep.sum())
        for name in self._cols:
            self._compact(self._cols[name], keep, _np)
        self._compact(self._items, keep, lambda a: _np(a).reshape(-1, self.maxlen))
        self._n = n
        blocks = max(1, -(-n // _BLOCK)) if self._cap > _BLOCK else 1
        for cols in self._cols.values():
            del cols[blocks:]
        del self._items[blocks:]
        self._cap = sum(len(b) for b in self._key)
        self._rebuild_slots(max(_MIN_BITS, (2 * n - 1).bit_length()))

    def partitions(self) -> set[int]:
        return set(self._counts)

    def users(self) -> int:
        return self._n

    def nbytes(self) -> int:
        """Bytes of the arrays that hold the histories (rows allocated plus the hash slots)."""
        cols = sum(len(b) * b.itemsize for blocks in self._cols.values() for b in blocks)
        items = sum(len(b) * b.itemsize for b in self._items)
        return cols + items + len(self._slots) * self._slots.itemsize

    # ---- rows ---------------------------------------------------------------------------------------

    def _hold(self, partition: int) -> None:
        """Count ``partition`` as held even while it has no users (a restored empty partition)."""
        self._counts.setdefault(partition, 0)

    def _history(self, r: int) -> np.ndarray | None:
        b, j = r >> _SHIFT, r & _LOW
        n = self._len[b][j]
        if not n:
            return None
        h, m = self._head[b][j], self.maxlen
        row = self._items[b][j * m : j * m + n]  # n == maxlen whenever h > 0
        return np.frombuffer(row[h:] + row[:h] if h else row, dtype=row.typecode).astype(np.int64)

    def _put(self, name: str, b: int, j: int, v: int) -> None:
        lo, hi = _RANGE[self._codes[name]]
        if not lo <= v < hi:
            self._widen(name, v)
        self._cols[name][b][j] = v

    def _widen(self, name: str, v: int) -> None:
        """Widen a column for the whole table until ``v`` fits (it is an int64)."""
        code = self._codes[name]
        while not _RANGE[code][0] <= v < _RANGE[code][1]:
            code = _WIDER[code]
        log.info("history: column %s widened to %s for value %d", name, code, v)
        self._codes[name] = code
        if name == "off":
            self._off_range = _RANGE[code]
        blocks = self._cols[name]
        blocks[:] = [array(code, blk) for blk in blocks]

    def _widen_items(self, item: int) -> None:
        if not _INT64[0] <= item < _INT64[1]:
            raise OverflowError(f"item id {item} is out of the int64 range")
        log.info("history: item ids widened to int64 for item %d", item)
        self._items[:] = [array("q", a) for a in self._items]
        self._icode, self._item_range = "q", _INT64

    def _new_row(self, slot: int, user: int, partition: int) -> int:
        if 2 * (self._n + 1) > len(self._slots):  # load factor <= 1/2: short probe chains
            self._rebuild_slots(self._bits + 1)
            slot, _ = self._probe(user)
        r = self._n
        if r == self._cap:
            self._grow_rows()
        self._slots[slot] = r + 1
        self._n += 1
        b, j = r >> _SHIFT, r & _LOW
        self._key[b][j] = user
        self._put("part", b, j, partition)
        self._off[b][j], self._ts[b][j], self._len[b][j], self._head[b][j] = -1, 0, 0, 0
        self._counts[partition] = self._counts.get(partition, 0) + 1
        return r

    def _move(self, r: int, partition: int) -> None:
        """The user's row now holds a fresh history in ``partition``."""
        b, j = r >> _SHIFT, r & _LOW
        self._counts[self._part[b][j]] -= 1
        self._put("part", b, j, partition)
        self._off[b][j], self._ts[b][j], self._len[b][j], self._head[b][j] = -1, 0, 0, 0
        self._counts[partition] = self._counts.get(partition, 0) + 1

    def _grow_rows(self) -> None:
        if self._cap < _BLOCK:  # the only block doubles (a copy of at most one block)
            size = min(max(2 * self._cap, _FIRST_ROWS), _BLOCK)
            for name, blocks in self._cols.items():
                new = _zeros(self._codes[name], size)
                if blocks:
                    new[: self._cap] = blocks[0]
                blocks[:] = [new]
            items = _zeros(self._icode, size * self.maxlen)
            if self._items:
                items[: self._cap * self.maxlen] = self._items[0]
            self._items[:] = [items]
            self._cap = size
        else:
            for name, blocks in self._cols.items():
                blocks.append(_zeros(self._codes[name], _BLOCK))
            self._items.append(_zeros(self._icode, _BLOCK * self.maxlen))
            self._cap += _BLOCK

    def _delete(self, slot: int, r: int) -> None:
        b, j = r >> _SHIFT, r & _LOW
        self._counts[self._part[b][j]] -= 1
        # Backward-shift deletion (no tombstones): a later entry of the chain moves into the hole
        # unless its home slot lies cyclically in (hole, its slot], where it must stay reachable.
        slots, mask = self._slots, len(self._slots) - 1
        i = k = slot
        while True:
            k = (k + 1) & mask
            s = slots[k]
            if not s:
                break
            rk = s - 1
            home = self._home(self._key[rk >> _SHIFT][rk & _LOW])
            if (k - home) & mask >= (k - i) & mask:
                slots[i] = s
                i = k
        slots[i] = 0
        last = self._n - 1
        if r != last:  # keep rows dense: the last row fills the hole
            lb, lj = last >> _SHIFT, last & _LOW
            for blocks in self._cols.values():
                blocks[b][j] = blocks[lb][lj]
            m = self.maxlen
            self._items[b][j * m : j * m + m] = self._items[lb][lj * m : lj * m + m]
            lslot, _ = self._probe(self._key[lb][lj])
            slots[lslot] = r + 1
        self._n = last

    def _column(self, name: str) -> np.ndarray:
        """A copy of a column's ``n`` rows."""
        blocks = self._cols[name]
        if not blocks:
            return np.zeros(0, dtype=self._codes[name])
        return np.concatenate([_np(b) for b in blocks])[: self._n]

    def _compact(self, blocks: list[Any], keep: np.ndarray, view: Callable[[Any], np.ndarray]) -> None:
        """Move the kept rows of one column to the front, in order, a block at a time."""
        w = 0
        for k, blk in enumerate(blocks):
            lo = k << _SHIFT
            if lo >= self._n:
                break
            src = view(blk)
            hi = min(lo + len(src), self._n)
            vals = src[: hi - lo][keep[lo:hi]]  # a copy: rows are read before anything overwrites them
            pos = 0
            while pos < len(vals):  # the destination rows w.. lie at or before the rows just read
                r = w + pos
                dst = view(blocks[r >> _SHIFT])
                c = min(len(dst) - (r & _LOW), len(vals) - pos)
                dst[r & _LOW : (r & _LOW) + c] = vals[pos : pos + c]
                pos += c
            w += len(vals)

    # ---- hash ---------------------------------------------------------------------------------------

    def _home(self, user: int) -> int:
        return (((user ^ self._seed) * _GOLDEN) & _M64) >> (64 - self._bits)

    def _probe(self, user: int) -> tuple[int, int]:
        """(slot, row) of ``user``, or (the empty slot where it would go, -1)."""
        slots, keys, mask = self._slots, self._key, len(self._slots) - 1
        i = (((user ^ self._seed) * _GOLDEN) & _M64) >> self._hshift
        while True:
            s = slots[i]
            if not s:
                return i, -1
            r = s - 1
            if keys[r >> _SHIFT][r & _LOW] == user:
                return i, r
            i = (i + 1) & mask

    def _rebuild_slots(self, bits: int) -> None:
        """Insert every row into 2^bits fresh slots, vectorised: in each round every key not yet placed
        tries its current slot; of those that find it empty one wins and the rest move on by one."""
        size, n = 1 << bits, self._n
        slots = np.zeros(size, dtype=np.int32)
        if n:
            keys = self._column("key").view(np.uint64)
            pos = ((keys ^ np.uint64(self._seed)) * np.uint64(_GOLDEN)) >> np.uint64(64 - bits)
            pos = pos.astype(np.int64)
            rows = np.arange(n, dtype=np.int64)
            while rows.size:
                free = np.flatnonzero(slots[pos] == 0)
                taken, first = np.unique(pos[free], return_index=True)
                winners = free[first]
                slots[taken] = rows[winners] + 1
                lose = np.ones(rows.size, dtype=bool)
                lose[winners] = False
                rows, pos = rows[lose], (pos[lose] + 1) & (size - 1)
        self._slots = array("i", slots.tobytes())
        self._bits, self._hshift = bits, 64 - bits


def encode_entry(user_id: int, items: list[int], offset: int, ts: int) -> bytes:
    """The changelog value: ``{"user_id","items","offset","ts"}`` (the wire format of existing topics)."""
    return _ENCODER.encode({"user_id": int(user_id), "items": items, "offset": offset, "ts": ts}).encode()


def restore(
    consumer: GroupConsumer, topic: str, partitions: Iterable[int], state: HistoryState, timeout_s: float = 60.0
) -> int:
    """Replay changelog ``partitions`` from the beginning into ``state``; returns the records read.

    ``consumer`` is a reader (``kafka_io.make_reader``: assign only, no group), so the worker's group
    membership is not touched. The end offsets are asked once, before reading: records produced after
    that belong to the live loop, which writes them itself.
    """
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    if not tps:
        return 0
    state.drop_partitions(tp.partition for tp in tps)
    for tp in tps:
        state._hold(tp.partition)
    consumer.assign_from(dict.fromkeys(tps))
    try:
        marks = consumer.watermarks(tps)
        end = {tp: high for tp, (_low, high) in marks.items()}
        remaining = {tp for tp, (low, high) in marks.items() if high > low}
        n, deadline = 0, time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"history restore of {topic} {sorted(tp.partition for tp in remaining)} timed out")
            for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                stop_at = end.get(tp, -1)  # a partition not asked for (none expected): nothing of it is applied
                for r in records:
                    if r.offset < stop_at:
                        state.restore_entry(tp.partition, r.key, r.value)
                        n += 1
            remaining = {tp for tp in remaining if not consumer.read_up_to(tp, end[tp])}
    finally:
        consumer.unassign()
    return n
