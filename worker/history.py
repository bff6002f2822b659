"""Per-user click history: an in-memory cache backed by a compacted changelog topic.

As in Kafka Streams: the state of clicks partition p lives in changelog partition p (same key,
same partition count); the worker writes a user's new state to the changelog before it commits
the click offsets, and on assignment of clicks partition p it replays changelog partition p.
Each changelog entry carries the clicks offset it reflects, so a click replayed after a crash
(changelog written, offset not yet committed) is recognised and not appended twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from worker.kafka_io import GroupConsumer, TopicPartition
from worker.requests import Click, user_key

log = logging.getLogger(__name__)


@dataclass
class UserHistory:
    items: list[int]
    last_offset: int  # clicks offset of the newest click applied (-1: none)
    ts: int = 0


@dataclass
class HistoryState:
    """Histories of the users in the clicks partitions this worker owns (last ``maxlen`` items each)."""

    maxlen: int
    _parts: dict[int, dict[int, UserHistory]] = field(default_factory=dict)
    _where: dict[int, int] = field(default_factory=dict)  # user -> partition
    _dirty: dict[int, set[int]] = field(default_factory=dict)  # partition -> users changed since drain

    def apply(self, partition: int, offset: int, click: Click) -> bool:
        """Append a click; False if this offset was already applied (a replay)."""
        users = self._parts.setdefault(partition, {})
        h = users.get(click.user_id)
        if h is None:
            h = users[click.user_id] = UserHistory([], -1)
            self._where[click.user_id] = partition
        elif offset <= h.last_offset:
            return False
        h.items.append(click.item_id)
        if len(h.items) > self.maxlen:
            del h.items[: len(h.items) - self.maxlen]
        h.last_offset, h.ts = offset, click.ts
        self._dirty.setdefault(partition, set()).add(click.user_id)
        return True

    def get(self, user_id: int) -> np.ndarray | None:
        p = self._where.get(user_id)
        h = None if p is None else self._parts.get(p, {}).get(user_id)
        return None if h is None or not h.items else np.asarray(h.items, dtype=np.int64)

    def drain_dirty(self) -> list[tuple[int, bytes, bytes]]:
        """Changelog records (partition, key, value) for every user changed since the last drain."""
        out = []
        for p, users in self._dirty.items():
            part = self._parts.get(p, {})
            for u in users:
                h = part.get(u)
                if h is not None:
                    out.append((p, user_key(u), encode_entry(u, h)))
        self._dirty.clear()
        return out

    def restore_entry(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record (later records win; a null value deletes the user)."""
        try:
            user = int(key) if key is not None else None
        except ValueError:
            user = None
        if value is None:
            if user is not None:
                self._parts.get(partition, {}).pop(user, None)
                self._where.pop(user, None)
            return
        try:
            obj = json.loads(value)
            user = int(obj["user_id"])
            items = [int(i) for i in obj["items"]][-self.maxlen :]
            h = UserHistory(items, int(obj.get("offset", -1)), int(obj.get("ts", 0)))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("history: skipping a bad changelog record in partition %d: %s", partition, e)
            return
        self._parts.setdefault(partition, {})[user] = h
        self._where[user] = partition

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            for u in self._parts.pop(p, {}):
                if self._where.get(u) == p:
                    del self._where[u]
            self._dirty.pop(p, None)

    def partitions(self) -> set[int]:
        return set(self._parts)

    def users(self) -> int:
        return len(self._where)


def encode_entry(user_id: int, h: UserHistory) -> bytes:
    return json.dumps(
        {"user_id": int(user_id), "items": h.items, "offset": h.last_offset, "ts": h.ts},
        separators=(",", ":"),
    ).encode()


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
        state._parts.setdefault(tp.partition, {})
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
