"""The item writer against the real local Kafka and Milvus Lite: final state, crashes, outages, DLQ."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from recall_testkit import assert_store_state, committed_total, expected_state, make_consumer

from mind_recall.item_wire import encode_item_event
from mind_recall.settings import Settings
from producers.items import publish, synthetic_updates
from worker import kafka_io
from worker.item_writer import EXIT_OUTAGE, ItemWriter
from worker.items import start_item_cache
from worker.metrics import Metrics
from worker.store import ItemStore

ROOT = Path(__file__).resolve().parents[3]
DIM = 16






def _committed(settings: Settings) -> int:
    return max(0, committed_total(settings, settings.worker.item_writer_group, settings.topics.item_embeddings))


def _writer_proc(
    settings: Settings,
    tmp_path: Path,
    *overrides: str,
    idle_exit_s: float | None = None,
    log_name: str = "writer.log",
) -> subprocess.Popen:
    cfg = tmp_path / "writer.yaml"
    cfg.write_text(settings.dump(mask_secrets=False))
    cmd = [sys.executable, "-m", "worker.item_writer", "-m", str(cfg), "-o", "metrics.enabled=false"]
    for o in overrides:
        cmd += ["-o", o]
    if idle_exit_s is not None:
        cmd += ["--idle-exit-s", str(idle_exit_s)]
    log = open(tmp_path / log_name, "w")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _wait(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_20k_updates_last_vector_wins_and_deletes_stay_deleted(settings: Settings) -> None:
    s = settings.replace(f"hyper_parameters.embedding_dim={DIM}")
    events = list(synthetic_updates(20_000, DIM, 2000, 0.05, seed=3, model_version="v1"))
    state, deleted = expected_state(events)
    assert len(deleted) > 100 and len(state) > 2000  # repeats, new items and deletes are all there
    publish(s, events[:10_000], binary=True, progress=False)
    publish(s, events[10_000:], binary=False, progress=False)  # both codecs
    metrics = Metrics()
    writer = ItemWriter(s, metrics)
    assert writer.run(idle_exit_s=2.0) == 0
    assert writer.committed == 20_000 and _committed(s) == 20_000
    assert_store_state(s, state, deleted)
    assert metrics.item_freshness._sum.get() > 0  # type: ignore[attr-defined]
    batches = metrics.registry.get_sample_value("mind_recall_item_batch_size_count")
    assert batches is not None and batches <= 40  # batched, not record by record


def test_kill_9_mid_stream_then_restart_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    s = settings.replace(f"hyper_parameters.embedding_dim={DIM}", "worker.item_batch_max=100")
    events = list(synthetic_updates(12_000, DIM, 1000, 0.05, seed=4, model_version="v1"))
    state, deleted = expected_state(events)
    publish(s, events[:8000], binary=True, progress=False)
    proc = _writer_proc(s, tmp_path)
    try:
        _wait(lambda: _committed(s) >= 1000, 60, "the writer to commit something")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = _committed(s)
        assert at_kill < 8000, "the writer finished before the kill: not mid-stream"
    finally:
        proc.kill()
    publish(s, events[8000:], binary=True, progress=False)
    proc = _writer_proc(s, tmp_path, idle_exit_s=3.0, log_name="writer2.log")
    assert proc.wait(90) == 0, (tmp_path / "writer2.log").read_text()[-3000:]
    assert _committed(s) == 12_000
    assert_store_state(s, state, deleted)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_milvus_outage_pauses_then_drains(settings: Settings, tmp_path: Path) -> None:
    """A real Milvus endpoint (Milvus Lite's gRPC server) stops mid-stream and comes back."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    port, data = _free_port(), str(tmp_path / "served.db")
    server, db, _ = start_server_in_thread(data_dir=data, host="127.0.0.1", port=port)
    s = settings.replace(
        f"hyper_parameters.embedding_dim={DIM}",
        f"milvus.uri=http://127.0.0.1:{port}",
        "milvus.timeout_s=3",
        "worker.retry_backoff_s=0.2",
        "worker.outage_limit_s=120",
    )
    events = list(synthetic_updates(6000, DIM, 1000, 0.05, seed=5, model_version="v1"))
    state, deleted = expected_state(events)
    publish(s, events[:3000], binary=True, progress=False)
    proc = _writer_proc(s, tmp_path)
    try:
        _wait(lambda: _committed(s) == 3000, 60, "the first half")
        server.stop(grace=0)
        db.close()
        publish(s, events[3000:], binary=True, progress=False)
        time.sleep(4)  # the writer sees the outage, backs off, keeps its group membership
        assert proc.poll() is None, "the writer died during the outage"
        assert _committed(s) == 3000  # nothing committed while Milvus is down
        server, db, _ = start_server_in_thread(data_dir=data, host="127.0.0.1", port=port)
        _wait(lambda: _committed(s) == 6000, 60, "the backlog to drain")
        assert_store_state(s, state, deleted)
        log = (tmp_path / "writer.log").read_text()
        assert "milvus unavailable" in log and "milvus is back" in log
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        server.stop(grace=0)
        db.close()
    assert rc == 0


def test_outage_limit_exits_non_zero_without_commit(settings: Settings, tmp_path: Path) -> None:
    """Milvus Lite is file-locked: while another process holds the .db the writer cannot open it."""
    s = settings.replace(
        f"hyper_parameters.embedding_dim={DIM}", "worker.retry_backoff_s=0.2", "worker.outage_limit_s=3"
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pymilvus import MilvusClient\nMilvusClient(sys.argv[1])\n"
            "print('held', flush=True)\n"
            "time.sleep(120)",
            s.milvus.uri,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        publish(s, synthetic_updates(200, DIM, 100, 0.0, seed=6, model_version="v1"), progress=False)
        t0 = time.monotonic()
        proc = _writer_proc(s, tmp_path)
        rc = proc.wait(60)
        assert rc == EXIT_OUTAGE and time.monotonic() - t0 >= 3
        assert "outage_limit_s" in (tmp_path / "writer.log").read_text()
        assert _committed(s) == 0
    finally:
        holder.kill()
        holder.wait()
    # once the lock is free the same records are all still there to write
    writer = ItemWriter(s)
    assert writer.run(idle_exit_s=2.0) == 0 and writer.committed == 200


def test_sigterm_during_an_outage_exits_at_once_without_commit(settings: Settings, tmp_path: Path) -> None:
    """An orchestrator's SIGTERM is not held up by the outage wait (the limit here is 5 minutes): the
    writer leaves within a backoff step, commits nothing of the unwritten batch, and exits 0."""
    s = settings.replace(
        f"hyper_parameters.embedding_dim={DIM}", "worker.retry_backoff_s=0.2", "worker.outage_limit_s=300"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pymilvus import MilvusClient\nMilvusClient(sys.argv[1])\n"
         "print('held', flush=True)\ntime.sleep(120)", s.milvus.uri],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        publish(s, synthetic_updates(200, DIM, 100, 0.0, seed=7, model_version="v1"), progress=False)
        proc = _writer_proc(s, tmp_path)
        _wait(lambda: "milvus unavailable" in (tmp_path / "writer.log").read_text(), 60, "the outage to be seen")
        time.sleep(3)  # a few backoff steps (0.2, 0.4, 0.8, 1.6 s)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        rc = proc.wait(60)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    log = (tmp_path / "writer.log").read_text()
    assert rc == 0, log[-2000:]
    assert took < 20, (took, log[-2000:])  # one backoff step (<= 10 s) and the shutdown, not the 300 s limit
    assert "stopped while waiting out milvus" in log and "200 records" in log
    assert _committed(s) == 0


def test_bad_records_go_to_dlq_with_reason_and_neighbours_apply(settings: Settings) -> None:
    s = settings.replace("worker.max_record_bytes=2000")
    store = ItemStore(s.milvus)
    store.set_alias(store.ensure_collection("v1", 4))
    store.ensure_collection("v2", 4)  # a rollout in progress: its records are accepted too
    store.close()
    good = lambda i, v="v1": encode_item_event(i, np.full(4, i, np.float32), v, 1000 + i)  # noqa: E731
    bad: list[tuple[str, bytes | None, bytes]] = [
        ("not_json", b"1", b"\xff{oops"),
        ("wrong_dim", b"2", encode_item_event(2, np.ones(5, np.float32), "v1", 1)[1]),
        ("not_finite", b"3", b'{"item_id": 3, "vector": [1, NaN, 0, 0], "model_version": "v1", "ts": 1}'),
        (
            "not_finite",
            b"4",
            encode_item_event(4, np.array([1, np.inf, 0, 0], np.float32), "v1", 1, binary=True)[1],
        ),
        ("bad_id", b"-5", b'{"item_id": -5, "vector": [1, 0, 0, 0], "model_version": "v1", "ts": 1}'),
        ("missing_field", b"6", b'{"item_id": 6, "model_version": "v1", "ts": 1}'),
        ("wrong_model_version", b"7", encode_item_event(7, np.ones(4, np.float32), "v-old", 1)[1]),
        (
            "oversized",
            b"8",
            json.dumps(
                {"item_id": 8, "vector": [0.1] * 4, "model_version": "v1", "ts": 1, "pad": "x" * 3000}
            ).encode(),
        ),
        ("wrong_type", b"9", b'{"item_id": "9", "vector": [1, 0, 0, 0], "model_version": "v1", "ts": 1}'),
        ("wrong_type", b"10", b'{"item_id": 10, "vector": "1,0,0,0", "model_version": "v1", "ts": 1}'),
        ("key_mismatch", b"11", good(12)[1]),  # compaction keeps one record per KEY: the key must be the id
    ]
    kafka_io.ensure_item_topic(s)
    producer = kafka_io.make_producer(s)
    for n, (_r, key, value) in enumerate(bad):
        producer.send(s.topics.item_embeddings, key=good(100 + n)[0], value=good(100 + n)[1])
        producer.send(s.topics.item_embeddings, key=key, value=value)
    producer.send(s.topics.item_embeddings, key=b"200", value=good(200, "v2")[1])
    producer.flush()
    producer.close()

    metrics = Metrics()
    writer = ItemWriter(s, metrics)
    assert writer.run(idle_exit_s=2.0) == 0 and writer.committed == 2 * len(bad) + 1

    reader = make_consumer(s, [s.topics.dlq], s.worker.item_writer_group + "-dlq-reader")
    got: list = []
    deadline = time.monotonic() + 30
    while len(got) < len(bad) and time.monotonic() < deadline:
        for recs in reader.poll(timeout_ms=300).values():
            got.extend(recs)
    reader.close()
    by_key = {r.key: (dict(r.headers), r.value) for r in got}
    assert len(got) == len(bad)
    for reason, key, value in bad:
        headers, original = by_key[key]
        assert headers["reason"].decode().split(":")[0] == reason, (key, headers["reason"])
        assert headers["error_class"].decode() == reason  # the reason code, as on the other DLQs
        assert original == value and headers["source_topic"].decode() == s.topics.item_embeddings
        assert (
            metrics.registry.get_sample_value(
                "mind_recall_dead_letters_total", {"topic": "item_embeddings", "reason": reason}
            )
            >= 1
        )
    store = ItemStore(s.milvus)
    assert store.count("items_v1") == len(bad) and store.count("items_v2") == 1  # every valid neighbour
    store.close()


def test_item_cache_follows_the_topic(settings: Settings, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    ids = np.arange(1, 101, dtype=np.int64)
    np.savez(export / "items.npz", ids=ids, vectors=np.ones((100, DIM), np.float32))
    (export / "manifest.json").write_text(json.dumps({"model_version": "v1", "dim": DIM, "created_ts": 1.0}))
    kafka_io.ensure_item_topic(settings)
    cache, follower = start_item_cache(settings, export, wait_s=30)
    try:
        assert len(cache) == 100 and cache.is_live(np.array([1, 100, 101])).tolist() == [True, True, False]
        now = int(time.time() * 1000)
        events = [
            (101, np.full(DIM, 2.0, np.float32), "v1", now),
            (5, None, "v1", now + 1),
            (6, np.full(DIM, 3.0, np.float32), "v1", now + 2),
            (7, np.zeros(DIM, np.float32), "v0", now + 3),
        ]
        publish(settings, events, progress=False)
        _wait(
            lambda: cache.is_live(np.array([101]))[0] and not cache.is_live(np.array([5]))[0],
            20,
            "the cache to follow",
        )
        _wait(lambda: cache.lookup(np.array([6]))[0][0, 0] == 3.0, 10, "the update")
        vecs, found = cache.lookup(np.array([[101, 5], [6, 7]]))
        assert found.tolist() == [[True, False], [True, True]] and vecs[1, 1, 0] == 1.0  # v0 ignored
    finally:
        follower.stop()
    assert follower.error is None


def test_item_cache_is_caught_up_only_after_what_the_topic_held(settings: Settings, tmp_path: Path) -> None:
    """A worker starting on a topic with history: ``caught_up`` means every event already there is applied
    (the end offsets are asked once at the start; partitions without events count as read)."""
    export = tmp_path / "export"
    export.mkdir()
    np.savez(export / "items.npz", ids=np.arange(1, 11, dtype=np.int64), vectors=np.ones((10, DIM), np.float32))
    (export / "manifest.json").write_text(json.dumps({"model_version": "v1", "dim": DIM, "created_ts": 1.0}))
    kafka_io.ensure_item_topic(settings)
    now = int(time.time() * 1000)
    events = [(i, np.full(DIM, float(i), np.float32), "v1", now + i) for i in range(11, 311)]
    events += [(3, None, "v1", now + 400)]  # a delete
    publish(settings, events, progress=False)
    cache, follower = start_item_cache(settings, export, wait_s=30)
    try:
        assert follower.caught_up.is_set()
        assert len(cache) == 10 + 300 - 1
        vecs, found = cache.lookup(np.array([[310, 3]]))
        assert found.tolist() == [[True, False]] and vecs[0, 0, 0] == 310.0
    finally:
        follower.stop()
    assert follower.error is None


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIND_RECALL__MILVUS__URI", raising=False)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
