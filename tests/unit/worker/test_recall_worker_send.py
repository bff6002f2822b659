"""RecallWorker._send_all's retry contract, over a fake producer returning real Delivery outcomes."""

from __future__ import annotations

from typing import Any

import confluent_kafka
import pytest

from mind_recall import wire
from mind_recall.settings import load
from mind_recall.wire import DeadLetter
from worker import kafka_io
from worker.recall_worker import RecallWorker


class _Producer:
    """Fails the values in ``fail`` with the given librdkafka error code (a transport error by default)."""

    def __init__(self, fail: set[bytes], code: int = confluent_kafka.KafkaError._TRANSPORT) -> None:
        self.fail, self.code, self.sent = fail, code, []  # type: ignore[var-annotated]

    def send(self, topic: str, key: Any, value: bytes, partition: Any, headers: Any) -> kafka_io.Delivery:
        self.sent.append((topic, value, headers))
        d = kafka_io.Delivery()
        d._report(confluent_kafka.KafkaError(self.code) if value in self.fail else None, None)
        return d

    def flush(self) -> None:
        pass


def _worker() -> RecallWorker:
    return RecallWorker(load(None, env={}), engine=None)  # type: ignore[arg-type]


def test_a_failed_send_is_retried_with_everything_after_it_in_order() -> None:
    w = _worker()
    sends = [("t", b"u1", v, None, None) for v in (b"r1", b"r2", b"r3", b"r4")]
    w.producer = _Producer(fail={b"r2"})
    with pytest.raises(kafka_io.KafkaError, match="1 of 4 sends failed") as e:
        w._send_all(sends)
    assert not isinstance(e.value, kafka_io.PermanentKafkaError)
    assert [s[2] for s in sends] == [b"r2", b"r3", b"r4"]  # r3 was delivered, but must not overtake r2
    w.producer = _Producer(fail=set())
    w._send_all(sends)
    assert [s[1] for s in w.producer.sent] == [b"r2", b"r3", b"r4"]


def test_a_record_the_broker_refuses_goes_to_the_dlq_instead_of_blocking() -> None:
    w = _worker()
    dlq = w.s.topics.dlq
    big = b"x" * 5000
    sends: list[Any] = [("recall-results", b"u1", big, None, None), ("recall-results", b"u1", b"r2", None, None)]
    w.producer = _Producer(fail={big}, code=confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)
    with pytest.raises(kafka_io.KafkaError):
        w._send_all(sends)
    topic, _key, value, _, headers = sends[0]  # replaced in place, still first: order kept
    h = dict(headers)
    assert topic == dlq and value == big and h["error_class"] == b"undeliverable"
    assert b"MSG_SIZE_TOO_LARGE" in h["reason"] or b"too large" in h["reason"].lower()
    w.producer = _Producer(fail=set())
    w._send_all(sends)
    assert [s[0] for s in w.producer.sent] == [dlq, "recall-results"]


def test_a_refused_dead_letter_is_cut_to_its_prefix_with_size_and_hash() -> None:
    w = _worker()
    dlq = w.s.topics.dlq
    raw = bytes(range(256)) * 40  # 10,240 bytes
    d = DeadLetter("clicks", 0, 7, b"7", raw, "not_json", "not JSON")
    sends: list[Any] = [(dlq, d.key, d.value, None, d.headers())]
    w.producer = _Producer(fail={raw}, code=confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)
    with pytest.raises(kafka_io.KafkaError):
        w._send_all(sends)
    _, _, value, _, headers = sends[0]
    h = dict(headers)
    assert value == raw[: wire.DLQ_PREFIX_BYTES] and h["truncated"] == b"true"
    assert h["original_value_size"] == b"10240" and h["source_offset"] == b"7" and h["error_class"] == b"not_json"
    import hashlib

    assert h["original_value_sha256"] == hashlib.sha256(raw).hexdigest().encode()
