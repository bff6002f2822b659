"""RecallWorker._send_all's retry contract, over a fake producer (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from mind_recall.settings import load
from worker import kafka_io
from worker.recall_worker import RecallWorker


class _Future:
    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.exception = None if ok else RuntimeError("broker gone")

    def failed(self) -> bool:
        return not self.ok


class _Producer:
    def __init__(self, fail: set[bytes]) -> None:
        self.fail, self.sent = fail, []  # type: ignore[var-annotated]

    def send(self, topic: str, key: Any, value: bytes, partition: Any, headers: Any) -> _Future:
        self.sent.append(value)
        return _Future(value not in self.fail)

    def flush(self) -> None:
        pass


def test_a_failed_send_is_retried_with_everything_after_it_in_order() -> None:
    w = RecallWorker(load(None, env={}), engine=None)  # type: ignore[arg-type]
    sends = [("t", b"u1", v, None, None) for v in (b"r1", b"r2", b"r3", b"r4")]
    w.producer = _Producer(fail={b"r2"})
    with pytest.raises(kafka_io.KafkaError, match="1 of 4 sends failed"):
        w._send_all(sends)
    assert [s[2] for s in sends] == [b"r2", b"r3", b"r4"]  # r3 was delivered, but must not overtake r2
    w.producer = _Producer(fail=set())
    w._send_all(sends)
    assert w.producer.sent == [b"r2", b"r3", b"r4"]
