"""Round trips on the real local broker through worker.kafka_io (the only Kafka module)."""

from __future__ import annotations

import json
import time

from recall_testkit import make_consumer

from mind_recall.settings import Settings
from mind_recall.wire import DeadLetter
from worker import kafka_io


def _drain(consumer, want: int, timeout_s: float = 30.0) -> list:  # type: ignore[no-untyped-def]
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
    return got


def test_produce_consume_commit_resume(settings: Settings) -> None:
    topic = settings.topics.clicks
    kafka_io.ensure_topics(settings, {topic: 2})
    producer = kafka_io.make_producer(settings)
    for i in range(100):
        value = json.dumps({"user_id": i % 7, "item_id": i, "ts": 1}).encode()
        producer.send(topic, key=str(i % 7).encode(), value=value)
    producer.flush()

    group = settings.worker.group_id
    c1 = kafka_io.make_group_consumer(settings, group)  # the workers' consumer
    c1.subscribe([topic], lambda _parts: None, lambda _parts: None)
    first = _drain(c1, 60)
    assert len(first) >= 60
    # commit exactly what was read so far, per partition
    next_offsets: dict = {}
    for r in first:
        tp = kafka_io.TopicPartition(r.topic, r.partition)
        next_offsets[tp] = max(next_offsets.get(tp, 0), r.offset + 1)
    c1.commit(next_offsets)
    c1.close()

    c2 = kafka_io.make_group_consumer(settings, group)
    c2.subscribe([topic], lambda _parts: None, lambda _parts: None)
    rest = _drain(c2, 100 - len(first))
    c2.close()
    seen = sorted(json.loads(r.value)["item_id"] for r in first + rest)
    assert seen == list(range(100))  # nothing lost, nothing read twice after the commit
    # per-key order is kept within a partition
    by_key: dict = {}
    for r in sorted(first + rest, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(json.loads(r.value)["item_id"])
    assert all(v == sorted(v) for v in by_key.values())


def test_dead_letter_keeps_bytes_and_reason(settings: Settings) -> None:
    src, dlq = settings.topics.recall_requests, settings.topics.dlq
    kafka_io.ensure_topics(settings, {src: 1, dlq: 1})
    producer = kafka_io.make_producer(settings)
    producer.send(src, key=b"42", value=b"\xffnot json")
    producer.flush()
    consumer = make_consumer(settings, [src], settings.worker.group_id)
    (record,) = _drain(consumer, 1)
    dead = DeadLetter.of(record, "ValueError", "not_json: Expecting value")
    kafka_io.send_dead_letter(producer, dlq, dead, settings.worker.dlq_max_bytes)
    producer.flush()
    consumer.close()

    reader = make_consumer(settings, [dlq], settings.worker.group_id + "-dlq")
    (out,) = _drain(reader, 1)
    reader.close()
    producer.close()
    headers = {k: v.decode() for k, v in out.headers}
    assert out.key == b"42" and out.value == b"\xffnot json"
    assert headers["source_topic"] == src
    assert headers["source_offset"] == str(record.offset)
    assert headers["error_class"] == "ValueError"
    assert headers["reason"].startswith("not_json")


def test_dead_letter_of_a_record_with_neither_key_nor_value(settings: Settings) -> None:
    """Other clients can write such a record; kafka-python refuses to send one, so the DLQ copy
    carries an empty value and says so in a header instead of crashing the worker."""
    from types import SimpleNamespace

    dlq = settings.topics.dlq
    kafka_io.ensure_topics(settings, {dlq: 1})
    record = SimpleNamespace(topic="clicks", partition=0, offset=7, key=None, value=None)
    dead = DeadLetter.of(record, "not_json", "not_json: null value")
    producer = kafka_io.make_producer(settings)
    delivery = kafka_io.send_dead_letter(producer, dlq, dead, settings.worker.dlq_max_bytes)
    producer.flush(timeout=30)
    assert delivery.succeeded(), delivery.exception
    producer.close()
    reader = make_consumer(settings, [dlq], settings.worker.group_id + "-dlq")
    (out,) = _drain(reader, 1)
    reader.close()
    headers = {k: v.decode() for k, v in out.headers}
    assert out.key is None and out.value == b""
    assert headers["original_value"] == "null" and headers["source_offset"] == "7"


def test_producer_partitions_keys_like_the_java_client(settings: Settings) -> None:
    """Co-partitioning depends on it: upstream services (Java, kafka-python) and this project's librdkafka
    producer must put the same user key on the same partition (murmur2), or a user's clicks and requests
    would reach different workers."""
    from kafka.partitioner.default import murmur2  # what the Java client and kafka-python use

    topic = settings.topics.clicks
    kafka_io.ensure_topics(settings, {topic: 4})
    producer = kafka_io.make_producer(settings)
    keys = [str(u).encode() for u in range(200)]
    for k in keys:
        producer.send(topic, key=k, value=b"x")
    producer.flush(timeout=30)
    reader = make_consumer(settings, [topic], settings.worker.group_id + "-part")
    got = _drain(reader, len(keys))
    reader.close()
    want = {k: (murmur2(k) & 0x7FFFFFFF) % 4 for k in keys}
    assert {r.key: r.partition for r in got} == want
    assert len(set(want.values())) == 4


def test_producer_warm_up_fetches_metadata_or_says_why_not(settings: Settings) -> None:
    import pytest

    topic = settings.topics.recall_requests
    kafka_io.ensure_topics(settings, {topic: 4})
    producer = kafka_io.make_producer(settings)
    producer.warm_up(topic)  # the real broker answers
    producer.send(topic, key=b"1", value=b"x")
    producer.flush(timeout=30)
    away = kafka_io.make_producer(settings.replace("kafka.bootstrap_servers=127.0.0.1:1"))
    with pytest.raises(kafka_io.KafkaError, match=topic):
        away.warm_up(topic, timeout=1.0)
    away.close(timeout=0.1)


def test_group_consumer_polls_seeks_and_commits(settings: Settings) -> None:
    """The librdkafka group consumer the recall worker uses: a poll returns what is buffered without
    waiting for a full batch, seek re-reads, commit/committed round-trip, callbacks run inside poll."""
    topic = settings.topics.recall_requests
    kafka_io.ensure_topics(settings, {topic: 1})
    producer = kafka_io.make_producer(settings)
    for i in range(10):
        producer.send(topic, key=b"k", value=str(i).encode())
    producer.flush(timeout=30)
    c = kafka_io.make_group_consumer(settings, settings.worker.group_id, fetch_max_wait_ms=10)
    assigned: list = []
    c.subscribe([topic], assigned.extend, lambda _: None)
    tp = kafka_io.TopicPartition(topic, 0)
    try:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            t0 = time.monotonic()
            polled = c.poll(timeout_ms=5000, max_records=500)
            if polled:
                assert time.monotonic() - t0 < 4, "poll waited for a full batch"
            got += polled.get(tp, [])
        assert assigned == [tp]
        assert [r.offset for r in got] == list(range(10)) and got[3].value == b"3" and got[3].key == b"k"
        c.seek(tp, 3)
        again: list = []
        while len(again) < 7 and time.monotonic() < deadline:
            again += c.poll(timeout_ms=500).get(tp, [])
        assert [r.offset for r in again] == list(range(3, 10))
        assert c.committed([tp]) == {tp: None}
        c.commit({tp: 5})
        assert c.committed([tp]) == {tp: 5}
        assert c.partitions_for_topic(topic) == {0}
        assert c.highwater(tp) == 10
    finally:
        c.close()


def test_reader_at_end_sees_only_new_records(settings: Settings) -> None:
    """The load generator's result reader: assigned at the end, it gets what is produced afterwards."""
    topic = settings.topics.recall_results
    kafka_io.ensure_topics(settings, {topic: 2})
    producer = kafka_io.make_producer(settings)
    for i in range(6):
        producer.send(topic, key=str(i).encode(), value=b"old")
    producer.flush(timeout=30)
    reader = kafka_io.make_reader(settings, fetch_max_wait_ms=10)
    reader.assign_at_end([kafka_io.TopicPartition(topic, p) for p in range(2)])
    for i in range(4):
        producer.send(topic, key=str(i).encode(), value=f"new{i}".encode())
    producer.flush(timeout=30)
    got: list = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < 4 and time.monotonic() < deadline:
            for recs in reader.poll(timeout_ms=200).values():
                got += recs
        time.sleep(0.5)
        for recs in reader.poll(timeout_ms=200).values():
            got += recs
    finally:
        reader.close()
    assert sorted(r.value for r in got) == [b"new0", b"new1", b"new2", b"new3"]


def test_group_consumer_seek_on_a_fresh_assignment_reassigns(settings: Settings) -> None:
    """librdkafka refuses a seek on a partition it has not started fetching (just assigned): the consumer
    then re-assigns that partition at the offset and keeps the others' positions."""
    import confluent_kafka

    topic = settings.topics.recall_requests
    kafka_io.ensure_topics(settings, {topic: 2})
    producer = kafka_io.make_producer(settings)
    for i in range(40):
        producer.send(topic, key=str(i).encode(), value=str(i).encode())
    producer.flush(timeout=30)
    c = kafka_io.make_group_consumer(settings, settings.worker.group_id, fetch_max_wait_ms=10)
    c.subscribe([topic], lambda _: None, lambda _: None)
    tps = [kafka_io.TopicPartition(topic, p) for p in range(2)]
    try:
        got: dict = {tp: [] for tp in tps}
        deadline = time.monotonic() + 30
        while sum(map(len, got.values())) < 40 and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=200).items():
                got[tp] += recs
        assert all(got.values()), "both partitions should hold records"

        class Refusing:  # the real consumer, except that seek fails as it does before the first fetch
            def __init__(self, inner: object) -> None:
                self._inner = inner

            def seek(self, _tp: object) -> None:
                raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(confluent_kafka.KafkaError._STATE))

            def __getattr__(self, name: str) -> object:
                return getattr(self._inner, name)

        c._c = Refusing(c._c)  # type: ignore[assignment]
        c.seek(tps[0], 2)
        again: list = []
        while len(again) < len(got[tps[0]]) - 2 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                again += recs
        time.sleep(0.3)
        for recs in c.poll(timeout_ms=200).values():
            again += recs
        assert [(r.partition, r.offset) for r in again] == [(0, o) for o in range(2, len(got[tps[0]]))]
    finally:
        c.close()


def test_reader_reads_partitions_to_their_end_offsets(settings: Settings) -> None:
    """The assign-only reader (history restore, item follower): from the beginning or an offset, up to the
    end offsets asked once at the start; an empty partition counts as read once its end was seen."""
    topic = settings.topics.history_changelog
    kafka_io.ensure_topics(settings, {topic: 3})
    producer = kafka_io.make_producer(settings)
    for i in range(30):
        producer.send(topic, key=f"k{i}".encode(), value=str(i).encode(), partition=i % 2)  # partition 2 stays empty
    producer.flush(timeout=30)
    tps = [kafka_io.TopicPartition(topic, p) for p in range(3)]
    reader = kafka_io.make_reader(settings, fetch_max_wait_ms=10)
    try:
        assert kafka_io.topic_partitions(reader, topic) == tps
        reader.assign_from({tps[0]: None, tps[1]: 5, tps[2]: None})
        marks = reader.watermarks(tps)
        assert marks == {tps[0]: (0, 15), tps[1]: (0, 15), tps[2]: (0, 0)}
        assert not reader.read_up_to(tps[0], 15)
        got: dict = {tp: [] for tp in tps}
        deadline = time.monotonic() + 30
        while not all(reader.read_up_to(tp, marks[tp][1]) for tp in tps) and time.monotonic() < deadline:
            for tp, recs in reader.poll(timeout_ms=200).items():
                got[tp] += [r.offset for r in recs]
        assert all(reader.read_up_to(tp, marks[tp][1]) for tp in tps)  # the empty one by its end-of-partition
        assert got == {tps[0]: list(range(15)), tps[1]: list(range(5, 15)), tps[2]: []}
        reader.unassign()
        assert reader.poll(timeout_ms=300) == {}
    finally:
        reader.close()
