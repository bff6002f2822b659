"""Shared set-up for the worker integration tests: ONE small MIND model trained on synth data and
exported per test session (cached under pytest's session temp dir), the reference (evaluation-path)
recall used to check the service's answers, the expected item state of an event stream, and stopping a
worker subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from model.data import pad_histories, read_train
from model.evaluation import exact_search
from model.merge import merge

TRAIN_OVERRIDES = [
    "runner.epochs=1",
    "runner.batches_per_epoch=80",
    "runner.progress=false",
    "hyper_parameters.neg_samples=100",
    "hyper_parameters.embedding_dim=16",
    "hyper_parameters.hidden_size=16",
]


def build_export(base: Path) -> Path:
    """Synth data (400 users, 600 items) -> 80 training batches -> export; reused within a session."""
    out = base / "recall-export"
    if (out / "export" / "manifest.json").is_file():
        return out
    from mind_recall.settings import load
    from model.export import export_checkpoint
    from model.synth import write_dataset
    from model.trainer import train

    write_dataset(out / "data", users=400, items=600, seed=7)
    s = load(
        None,
        overrides=[
            f"runner.train_data_dir={out / 'data' / 'train'}",
            f"runner.test_data_dir={out / 'data' / 'valid'}",
            f"runner.model_save_path={out / 'ckpt'}",
            *TRAIN_OVERRIDES,
        ],
        env={},
    )
    train(s)
    export_checkpoint(s, out / "export")
    return out


def train_histories(base: Path) -> dict[int, np.ndarray]:
    return dict(read_train(base / "data" / "train"))


class Reference:
    """The evaluation path: tower + exact BLAS search + merge, one user at a time."""

    def __init__(self, export_dir: Path) -> None:
        from model.tower import UserTower

        self.tower = UserTower.load(export_dir)
        with np.load(export_dir / "items.npz") as z:
            self.ids, self.vecs = z["ids"].astype(np.int64), z["vectors"].astype(np.float32)
        self.table = np.zeros((int(self.ids.max()) + 1, self.vecs.shape[1]), np.float32)
        self.table[self.ids] = self.vecs
        self.search = exact_search(self.ids, self.vecs)
        self.popular = np.load(export_dir / "popular.npy")

    def recall(self, hist: np.ndarray, top_k: int, exclude_seen: bool) -> list[tuple[int, float]]:
        h, length = pad_histories([np.asarray(hist)], self.tower.maxlen)
        interests, n = self.tower.encode(self.table[h], length)
        k = int(n[0])
        extra = np.unique(hist).size if exclude_seen else 0
        ids, scores = self.search(interests[0, :k], top_k + extra)
        got = merge(ids, scores, top_k, k, exclude=hist if exclude_seen else ())
        return [(c.item_id, c.score) for c in got]


def same_ranking(got: list[dict[str, Any]], want: list[tuple[int, float]], tol: float = 1e-4) -> bool:
    """Same ids in the same order up to score ties: position-wise scores agree within ``tol`` and the
    id sets differ only by items tied with the last (cut-off) score."""
    if len(got) != len(want):
        return False
    if any(abs(g["score"] - w[1]) > tol for g, w in zip(got, want, strict=True)):
        return False
    cut = want[-1][1] if want else 0.0
    differ = {g["item_id"] for g in got} ^ {w[0] for w in want}
    scores = {g["item_id"]: g["score"] for g in got} | {w[0]: w[1] for w in want}
    return all(abs(scores[i] - cut) <= tol for i in differ)


def make_consumer(settings: Any, topics: Iterable[str] | None, group_id: str | None, **overrides: Any) -> Any:
    """The tests' independent reader: kafka-python (a test dependency only), a manual-commit consumer of raw
    bytes; ``topics=None`` leaves assignment to the caller. Use ``KTopicPartition`` with it."""
    from kafka import KafkaConsumer

    k = settings.kafka
    cfg: dict[str, Any] = {
        "bootstrap_servers": [h.strip() for h in k.bootstrap_servers.split(",") if h.strip()],
        "client_id": k.client_id, "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms, "reconnect_backoff_max_ms": 2000,
        "group_id": group_id, "enable_auto_commit": False, "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": max(1_048_576, settings.worker.max_record_bytes * 2),
    }
    if k.security_protocol.startswith("SASL"):
        cfg.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                   sasl_plain_password=k.sasl_password)
    cfg.update(overrides)
    consumer = KafkaConsumer(**cfg)
    if topics is not None:
        consumer.subscribe(list(topics))
    return consumer


def KTopicPartition(topic: str, partition: int) -> Any:
    from kafka import TopicPartition

    return TopicPartition(topic, partition)


def committed_total(settings: Any, group: str, topic: str) -> int:
    """Sum of ``group``'s committed offsets on ``topic``; -1 when the broker cannot tell (e.g. restarting)."""
    from worker import kafka_io

    try:
        return sum(kafka_io.committed_offsets(settings, group, topic).values())
    except kafka_io.KafkaError:
        return -1


def read_topic(settings: Any, topic: str, want: int, timeout_s: float = 30.0, match: Any = None) -> list[Any]:
    """Read records of ``topic`` from the beginning until ``want`` match (or the timeout)."""
    c = make_consumer(settings, None, None)
    try:
        parts = c.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout_s
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = c.partitions_for_topic(topic) or set()
        tps = [KTopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        while len(out) < want and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(r for r in recs if match is None or match(r))
        return out
    finally:
        c.close()


def results_by_id(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {b["request_id"]: b for b in (json.loads(r.value) for r in records)}


def expected_state(events: Iterable[tuple]) -> tuple[dict[int, np.ndarray], set[int]]:
    """The last vector per item and the ids whose last event was a delete, in stream order."""
    state: dict[int, np.ndarray] = {}
    deleted: set[int] = set()
    for item_id, vec, _v, _ts in events:
        if vec is None:
            state.pop(item_id, None)
            deleted.add(item_id)
        else:
            state[item_id] = vec
            deleted.discard(item_id)
    return state, deleted


def assert_store_state(settings: Any, state: dict[int, np.ndarray], deleted: set[int]) -> None:
    """Milvus holds exactly ``state``: every live item with its last vector, no deleted one."""
    from worker.store import ItemStore

    store = ItemStore(settings.milvus)
    try:
        assert store.count() == len(state)
        ids = np.array(sorted(state), np.int64)
        got_ids, got = store.get_vectors(np.concatenate([ids, np.array(sorted(deleted), np.int64)]))
        order = np.argsort(got_ids)
        assert got_ids[order].tolist() == ids.tolist()  # every live item, no deleted one
        np.testing.assert_array_equal(got[order], np.stack([state[i] for i in ids.tolist()]))  # the LAST one
    finally:
        store.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM and wait; a worker that does not stop gracefully fails the test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        # Every thread's stack into the worker's log first (mind_recall.logs: faulthandler on SIGUSR1).
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        proc.wait(5)
        raise AssertionError("the worker did not stop on SIGTERM (thread stacks at the end of its log)") from None


def store_round_trip(store: Any, name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Upsert 300 rows, overwrite 10, delete 10, then get and search (exact: FLAT + IP) against numpy.
    Shared by the Milvus Lite and the Milvus server store tests; returns (ids, vectors) as first written."""
    ids = np.arange(1, 301, dtype=np.int64)
    vecs = rng.standard_normal((300, 8)).astype(np.float32)
    store.upsert(name, ids, vecs, np.full(300, 5, np.int64))
    store.upsert(name, ids[:10], vecs[:10] * 2, np.full(10, 6, np.int64))  # overwrite
    store.delete(name, ids[290:])
    assert store.count() == 290 and store.count(name) == 290

    got_ids, got = store.get_vectors(np.array([1, 2, 295, 9999]))
    order = np.argsort(got_ids)
    assert got_ids[order].tolist() == [1, 2]
    np.testing.assert_allclose(got[order], vecs[:2] * 2, rtol=1e-6)

    top_ids, scores = store.search(vecs[[20, 295]], top_k=5)
    live_vecs = vecs.copy()
    live_vecs[:10] *= 2
    exact = np.argsort(-(vecs[[20, 295]] @ live_vecs[:290].T), axis=1)[:, :5] + 1  # ids = row + 1
    assert top_ids.tolist() == exact.tolist()  # FLAT + IP: exact
    assert not np.isin(top_ids, ids[290:]).any()  # deleted ids never come back
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert store._direct is True  # one chunk: the blocking RPC below pymilvus' result parsing
    store._direct = False  # the public client.search path answers the same
    public_ids, public_scores = store.search(vecs[[20, 295]], top_k=5)
    store._direct = None
    assert public_ids.tolist() == top_ids.tolist()
    np.testing.assert_allclose(public_scores, scores, rtol=1e-6)

    # Chunked calls (fired together, read straight from the response) against numpy: every row, the
    # chunk boundaries, and the padding of rows with fewer hits than asked for.
    chunked = type(store)(dataclasses.replace(store.cfg, search_chunk=3))
    queries = rng.standard_normal((10, 8)).astype(np.float32)
    got_ids, got_scores = chunked.search(queries, top_k=300, collection=name)
    chunked.close()
    exact_scores = queries @ live_vecs[:290].T
    order = np.argsort(-exact_scores, axis=1)
    assert got_ids[:, :290].tolist() == (order + 1).tolist()
    np.testing.assert_allclose(got_scores[:, :290], np.take_along_axis(exact_scores, order, 1), rtol=1e-4, atol=1e-4)
    assert (got_ids[:, 290:] == -1).all() and np.isneginf(got_scores[:, 290:]).all()
    return ids, vecs


ROOT = Path(__file__).resolve().parents[3]


def spawn_recall_worker(settings: Any, export: Path, log: Path, *overrides: str) -> subprocess.Popen:
    """`mind-recall worker --roles recall` as a subprocess with ``settings`` (plus ``overrides``), its
    output in ``log``; the test's own environment overrides are not inherited."""
    child = settings.replace("worker.session_timeout_ms=6000", "worker.batch_ms=5", "metrics.enabled=false",
                             *overrides)
    args = [sys.executable, "-m", "cli", "worker", "--roles", "recall",
            "--export", str(export), "--load-items"]
    for o in child.as_overrides():
        args += ["-o", o]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIND_RECALL__")}
    env.update(PYTHONPATH=str(ROOT), MIND_RECALL_LOG="INFO", PYTHONUNBUFFERED="1")
    f = open(log, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)


class Running:
    """A RecallWorker in a thread of this process (sharing one Milvus Lite client with the test)."""

    def __init__(self, settings: Any, store: Any, engine_delay_s: float = 0.0) -> None:
        from worker.metrics import Metrics
        from worker.recall_worker import RecallWorker, build_engine

        self.metrics = Metrics()
        engine, _, self.follower = build_engine(settings, settings.worker.export_dir, store=store, metrics=self.metrics)
        if engine_delay_s:  # a slow engine keeps several micro-batches in flight
            recall = engine.recall
            engine.recall = lambda qs: (time.sleep(engine_delay_s), recall(qs))[1]  # type: ignore[method-assign]
        self.worker = RecallWorker(settings, engine, self.metrics)
        self.worker.open()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.worker.ready.wait(30), "worker got no partitions"

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(20)
        if self.follower is not None:
            self.follower.stop()
        assert self.error is None, self.error


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusServer:
    """Milvus Lite served over gRPC on a fixed port, so it can stop and come back at the same address."""

    def __init__(self, data_dir: Path) -> None:
        self.port, self.data = _free_port(), str(data_dir)
        self.server: Any = None
        self.db: Any = None
        self.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from milvus_lite.adapter.grpc.server import start_server_in_thread

        self.server, self.db, _ = start_server_in_thread(data_dir=self.data, host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0)
            self.db.close()
            self.server = self.db = None
