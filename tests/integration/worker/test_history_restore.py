"""History restore from the compacted changelog on the real broker, through the assign-only reader."""

from __future__ import annotations

import json

from mind_recall.settings import Settings
from mind_recall.wire import Click
from worker import kafka_io
from worker.history import HistoryState, restore


def _entry(user: int, items: list[int], offset: int) -> bytes:
    return json.dumps({"user_id": user, "items": items, "offset": offset, "ts": 1}).encode()


def test_restore_replays_the_owned_partitions_up_to_their_end(settings: Settings) -> None:
    topic = settings.topics.history_changelog
    kafka_io.ensure_topics(settings, {topic: 3}, configs={topic: {"cleanup.policy": "compact"}})
    producer = kafka_io.make_producer(settings)
    sent = [
        (0, b"1", _entry(1, [10], 0)),
        (0, b"1", _entry(1, [10, 11], 1)),  # a later entry wins
        (0, b"2", _entry(2, [20], 2)),
        (0, b"2", None),  # a tombstone deletes user 2
        (0, b"3", b"not json"),  # skipped with a warning, the restore goes on
        (1, b"4", _entry(4, [40, 41, 42], 7)),
        (2, b"5", _entry(5, [50], 0)),  # partition 2 is not restored
    ]
    for p, k, v in sent:
        producer.send(topic, key=k, value=v, partition=p)
    producer.flush(timeout=30)

    state = HistoryState(maxlen=2)
    state.apply(0, 99, Click(9, 1, 1))  # stale local state of a restored partition is dropped
    reader = kafka_io.make_reader(settings, fetch_max_wait_ms=10)
    try:
        n = restore(reader, topic, [0, 1], state, timeout_s=30)
        assert n == 6
        assert state.partitions() == {0, 1}
        assert state.get(1).tolist() == [10, 11]
        assert state.get(2) is None and state.get(9) is None and state.get(5) is None
        assert state.get(4).tolist() == [41, 42]  # maxlen applies to restored entries
        assert not state.apply(1, 7, Click(4, 1, 1))  # the clicks offset it reflects is remembered

        producer.send(topic, key=b"6", value=_entry(6, [60], 3), partition=0)
        producer.flush(timeout=30)
        assert restore(reader, topic, [0], state, timeout_s=30) == 6  # the reader is reusable
        assert state.get(6).tolist() == [60] and state.get(4).tolist() == [41, 42]
        assert restore(reader, topic, [2], state, timeout_s=30) == 1
        assert restore(reader, topic, [], state) == 0
    finally:
        reader.close()


def test_restore_of_empty_partitions_returns_at_once(settings: Settings) -> None:
    topic = settings.topics.history_changelog
    kafka_io.ensure_topics(settings, {topic: 2}, configs={topic: {"cleanup.policy": "compact"}})
    state = HistoryState(maxlen=4)
    reader = kafka_io.make_reader(settings)
    try:
        assert restore(reader, topic, [0, 1], state, timeout_s=5) == 0
        assert state.partitions() == {0, 1} and state.users() == 0
    finally:
        reader.close()

