"""worker/outage.py: which errors are waited out, the backoff, the limit, and stop (pure logic)."""

from __future__ import annotations

import time

import pytest

from mind_recall import wire
from mind_recall.wire import DeadLetter
from worker import kafka_io
from worker.outage import Outage, OutageError, Stopped, retry, transient
from worker.store import SchemaMismatch, StoreError


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (kafka_io.KafkaError("broker gone"), True),
        (kafka_io.CommitFailedError("moved on"), True),
        (StoreError("milvus down"), True),
        (TimeoutError("restore timed out"), True),
        (ConnectionRefusedError("no"), True),
        (kafka_io.PermanentKafkaError("MSG_SIZE_TOO_LARGE"), False),
        (SchemaMismatch("dim 8 != 16"), False),
        (OutageError("already past the limit"), False),
        (RuntimeError("a Paddle error"), False),
        (NotImplementedError(), False),
        (KeyError("user"), False),
        (ValueError("bad shape"), False),
        (OSError("disk full"), False),
    ],
)
def test_only_kafka_and_store_transport_errors_are_transient(error: Exception, expected: bool) -> None:
    assert transient(error) is expected


def test_a_bug_is_raised_at_once_not_retried() -> None:
    calls = []

    def bug() -> None:
        calls.append(1)
        raise NotImplementedError("no GPU kernel")

    with pytest.raises(NotImplementedError):
        retry(bug, "recall", limit_s=300, backoff_s=0.01, wait=lambda _s: False)
    assert calls == [1]


def test_transient_errors_back_off_doubling_then_succeed() -> None:
    delays: list[float] = []
    left = [3]

    def flaky() -> str:
        if left[0]:
            left[0] -= 1
            raise StoreError("milvus down")
        return "ok"

    assert retry(flaky, "search", limit_s=300, backoff_s=0.5, wait=lambda s: delays.append(s) is not None) == "ok"
    assert delays == [0.5, 1.0, 2.0]


def test_the_backoff_is_capped_and_never_waits_past_the_limit() -> None:
    o = Outage(limit_s=300, backoff_s=0.5)
    delays = [o.failed(StoreError("down")) for _ in range(10)]
    assert max(delays) == 10.0 and delays[-1] == 10.0
    o2 = Outage(limit_s=0.2, backoff_s=5.0)
    assert o2.failed(StoreError("down")) <= 0.25


def test_past_the_limit_it_raises_outage_error_naming_the_step_and_the_limit() -> None:
    o = Outage(limit_s=0.05, backoff_s=0.01, what="kafka (commit)")
    o.failed(kafka_io.KafkaError("gone"))
    time.sleep(0.08)
    with pytest.raises(OutageError, match=r"kafka \(commit\) failing for .* > worker.outage_limit_s=0.05"):
        o.failed(kafka_io.KafkaError("gone"))


def test_ok_resets_the_clock() -> None:
    o = Outage(limit_s=0.05, backoff_s=0.01)
    o.failed(StoreError("down"))
    time.sleep(0.08)
    o.ok()
    assert o.started is None and o.failed(StoreError("down again")) == 0.01


def test_stop_while_waiting_raises_stopped() -> None:
    def down() -> None:
        raise StoreError("down")

    with pytest.raises(Stopped):
        retry(down, "recall", limit_s=300, backoff_s=0.01, wait=lambda _s: True)


# -- DeadLetter.fit: a poison record as large as the broker allows still reaches the DLQ --------------
def test_a_dead_letter_within_the_limit_is_kept_whole() -> None:
    d = DeadLetter("clicks", 1, 5, b"7", b"{nope", "not_json", "not JSON")
    assert d.fit(4096) is d and "truncated" not in dict(d.headers())


def test_an_oversized_dead_letter_keeps_prefix_sizes_hashes_and_offsets() -> None:
    import hashlib

    value, key = b"\xff" + bytes(1_048_399), b"k" * 3000
    d = DeadLetter("clicks", 2, 9, key, value, "not_json", "not JSON: invalid start byte")
    cut = d.fit(1_000_000)
    h = dict(cut.headers())
    assert cut.value == value[: wire.DLQ_PREFIX_BYTES] and cut.key == key[: wire.DLQ_PREFIX_BYTES]
    assert h["truncated"] == b"true" and h["original_value_size"] == b"1048400"
    assert h["original_value_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["original_key_size"] == b"3000"
    assert (h["source_topic"], h["source_partition"], h["source_offset"]) == (b"clicks", b"2", b"9")
    assert h["error_class"] == b"not_json" and cut.size() < 8192
