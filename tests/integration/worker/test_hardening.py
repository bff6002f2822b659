"""Issue 13 on the real broker and Milvus Lite: no single record may stall a consumer, a bug is not an
outage, and consumer_lag shows a consumer that is stuck."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from recall_testkit import Running, committed_total, read_topic, results_by_id

from mind_recall import wire
from mind_recall.item_wire import encode_item_event
from mind_recall.settings import Settings
from mind_recall.wire import encode_request, user_key
from worker import kafka_io
from worker.item_writer import ItemWriter
from worker.metrics import Metrics
from worker.store import ItemStore, StoreError

pytestmark = pytest.mark.integration

# The poison record: not JSON, and as large as the broker's default limit allows (1048588 per batch).
POISON_SIZE = 1_048_400


def _poison() -> bytes:
    return b"\xff" + os.urandom(POISON_SIZE - 1)


def _settings(settings: Settings, export_base: Path, *extra: str) -> Settings:
    return settings.replace(
        f"worker.export_dir={export_base / 'export'}", "topics.partitions=1", "worker.batch_ms=5",
        "worker.session_timeout_ms=6000", *extra,
    )


def _produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    p = kafka_io.make_producer(settings)
    sent = [p.send(topic, key=k, value=v) for k, v in records]
    p.flush()
    assert all(d.succeeded() for d in sent), [str(d.exception) for d in sent if not d.succeeded()]


def _request(rid: str, user: int = 3) -> tuple[bytes, bytes]:
    return user_key(user), encode_request(rid, user, 5, int(time.time() * 1000), [1, 2, 3])


def _dlq(settings: Settings, want: int, timeout_s: float = 30.0) -> list[Any]:
    return read_topic(settings, settings.topics.dlq, want, timeout_s)


def _committed(settings: Settings, group: str, topic: str) -> int:
    return committed_total(settings, group, topic)


def _assert_cut_copy(record: Any, original: bytes, topic: str) -> None:
    h = {k: v.decode() for k, v in record.headers}
    assert h["truncated"] == "true" and h["source_topic"] == topic and h["source_offset"] == "0"
    assert h["original_value_size"] == str(len(original))
    assert h["original_value_sha256"] == hashlib.sha256(original).hexdigest()
    assert record.value == original[: wire.DLQ_PREFIX_BYTES] and h["error_class"] == "not_json"


def test_a_poison_click_is_dead_lettered_cut_and_requests_are_still_answered(
    settings: Settings, export_base: Path, store: ItemStore
) -> None:
    s = _settings(settings, export_base)
    run = Running(s, store)
    try:
        poison = _poison()
        _produce(s, s.topics.clicks, [(b"7", poison)])  # the repro, on the clicks topic
        _produce(s, s.topics.recall_requests, [_request("after-poison")])
        got = results_by_id(read_topic(s, s.topics.recall_results, 1, 40))
        assert got["after-poison"]["source"] == "mind"  # answered, not stuck behind the poison record
        (dead,) = _dlq(s, 1)
        _assert_cut_copy(dead, poison, s.topics.clicks)
        deadline = time.monotonic() + 20  # its offset is committed: a restart does not meet it again
        while _committed(s, s.worker.group_id, s.topics.clicks) < 1:
            assert time.monotonic() < deadline, "the poison record's offset was never committed"
            time.sleep(0.2)
        assert run.metrics.registry.get_sample_value(
            "mind_recall_dead_letters_total", {"topic": "clicks", "reason": "not_json"}) == 1
    finally:
        run.stop()


def test_a_poison_item_record_is_dead_lettered_cut_and_the_writer_goes_on(settings: Settings) -> None:
    s = settings.replace("hyper_parameters.embedding_dim=4")
    kafka_io.ensure_item_topic(s)
    poison = _poison()
    good = [encode_item_event(i, np.full(4, i, np.float32), "v1", 1000 + i) for i in (1, 2, 3)]
    _produce(s, s.topics.item_embeddings, [(b"7", poison), *good])
    writer = ItemWriter(s, Metrics())
    t0 = time.monotonic()
    assert writer.run(idle_exit_s=2.0) == 0  # no "kafka unavailable" retries: it returns once idle
    assert time.monotonic() - t0 < 30 and writer.committed == 4
    (dead,) = _dlq(s, 1)
    _assert_cut_copy(dead, poison, s.topics.item_embeddings)
    st = ItemStore(s.milvus)
    try:
        assert st.count("items_v1") == 3
    finally:
        st.close()


def test_a_bug_in_the_engine_crashes_the_worker_at_once_and_commits_nothing(
    settings: Settings, export_base: Path, store: ItemStore
) -> None:
    s = _settings(settings, export_base, "worker.outage_limit_s=300")
    run = Running(s, store)

    def bug(_queries: Any) -> Any:
        raise NotImplementedError("a tower op with no CPU kernel")

    run.worker.engine.encode = bug  # type: ignore[method-assign]
    run.worker.engine.recall = bug  # type: ignore[method-assign]
    t0 = time.monotonic()
    _produce(s, s.topics.recall_requests, [_request("hits-the-bug")])
    run.thread.join(30)
    assert not run.thread.is_alive(), "the worker went on retrying a bug as if it were an outage"
    assert isinstance(run.error, NotImplementedError) and time.monotonic() - t0 < 30
    assert _committed(s, s.worker.group_id, s.topics.recall_requests) == 0  # redelivered after the fix
    run.error = None
    run.stop()


def test_consumer_lag_shows_a_consumer_stuck_in_an_outage(
    settings: Settings, export_base: Path, store: ItemStore
) -> None:
    s = _settings(settings, export_base, "worker.outage_limit_s=300", "worker.retry_backoff_s=0.2")
    run = Running(s, store)
    down = threading.Event()
    search_merge = run.worker.engine.search_merge

    def unavailable(enc: Any) -> Any:
        if down.is_set():
            raise StoreError("milvus search failed: connection refused (simulated outage)")
        return search_merge(enc)

    run.worker.engine.search_merge = unavailable  # type: ignore[method-assign]
    lag = lambda: run.metrics.registry.get_sample_value(  # noqa: E731
        "mind_recall_consumer_lag", {"topic": "recall_requests"}) or 0.0
    try:
        down.set()
        _produce(s, s.topics.recall_requests, [_request(f"stuck-{n}") for n in range(20)])
        deadline = time.monotonic() + 30
        while lag() < 20:
            assert time.monotonic() < deadline, f"consumer_lag stayed at {lag()} while the worker was stuck"
            time.sleep(0.2)
        assert run.thread.is_alive()
        down.clear()  # the outage ends: everything is answered and the lag drains
        got = results_by_id(read_topic(s, s.topics.recall_results, 20, 40))
        assert {f"stuck-{n}" for n in range(20)} <= set(got)
        deadline = time.monotonic() + 30
        while lag() > 0:
            assert time.monotonic() < deadline, f"consumer_lag stayed at {lag()} after the outage"
            time.sleep(0.2)
    finally:
        run.stop()
