"""The recall worker (a real subprocess) against a Milvus endpoint that goes away: Milvus Lite's gRPC
server on a port, stopped and restarted by the test (as in test_item_writer.py's Milvus outage).

Promise: requests wait (retry with backoff) and are all answered once Milvus is back; past
``worker.outage_limit_s`` the worker exits with code 3 without committing, and a restarted worker answers.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from recall_testkit import (
    KTopicPartition,
    MilvusServer,
    committed_total,
    make_consumer,
    spawn_recall_worker,
    stop_process,
)

from mind_recall.settings import Settings
from mind_recall.wire import encode_request, user_key
from worker import kafka_io
from worker.recall_worker import RecallWorker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
EXIT_OUTAGE = 3  # App: a role past worker.outage_limit_s


@pytest.fixture
def milvus(tmp_path: Path) -> Iterator[MilvusServer]:
    m = MilvusServer(tmp_path / "served.db")
    yield m
    m.stop()


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _spawn(s: Settings, tmp: Path, export: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{name}.log"
    proc = spawn_recall_worker(s, export, log, "milvus.timeout_s=3", "worker.retry_backoff_s=0.2",
                               "topics.partitions=2", *extra)
    return proc, log




def _send(s: Settings, prefix: str, n: int) -> set[str]:
    """n requests with an explicit history (the MIND path: tower + Milvus search); returns their ids."""
    p = kafka_io.make_producer(s)
    now = int(time.time() * 1000)
    ids = set()
    for i in range(n):
        u, rid = 1 + i % 30, f"{prefix}{i}"
        p.send(s.topics.recall_requests, key=user_key(u), value=encode_request(rid, u, 10, now, [1 + i, 9, 17]))
        ids.add(rid)
    p.flush()
    p.close()
    return ids


def _results(s: Settings) -> list[dict[str, Any]]:
    """Every record on the results topic, read to its end (duplicates kept)."""
    c = make_consumer(s, None, None)
    try:
        parts = c.partitions_for_topic(s.topics.recall_results) or set()
        tps = [KTopicPartition(s.topics.recall_results, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps, timeout_ms=10_000)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(json.loads(r.value) for r in recs)
        return out
    finally:
        c.close()


def _ids(s: Settings) -> list[str]:
    return [r["request_id"] for r in _results(s)]


def _committed(s: Settings) -> int:
    return committed_total(s, s.worker.group_id, s.topics.recall_requests)


def _setup(settings: Settings, milvus: MilvusServer) -> Settings:
    s = settings.replace("topics.partitions=2", f"milvus.uri={milvus.uri}")
    RecallWorker(s, engine=None).ensure_topics()  # type: ignore[arg-type]
    return s


def test_requests_wait_for_milvus_and_are_all_answered(
    settings: Settings, milvus: MilvusServer, export_base: Path, tmp_path: Path
) -> None:
    s = _setup(settings, milvus)
    proc, log = _spawn(s, tmp_path, export_base / "export", "w", "worker.outage_limit_s=120")
    try:
        _wait(lambda: b"restored" in log.read_bytes(), 90, "the worker to own its partitions")
        before = _send(s, "before", 20)
        _wait(lambda: set(_ids(s)) >= before, 30, "answers before the outage")
        milvus.stop()
        during = _send(s, "during", 20)
        time.sleep(8)
        assert proc.poll() is None, "the worker exited during the Milvus outage"
        assert not set(_ids(s)) & during, "answered without Milvus"
        milvus.start()
        _wait(lambda: set(_ids(s)) >= before | during, 60, "every request to be answered")
        time.sleep(1)  # a late duplicate would show up now
        results = _results(s)
        assert proc.poll() is None
    finally:
        rc = stop_process(proc)
        text = log.read_text()
        print(text[-3000:])
    got = [r["request_id"] for r in results]
    assert sorted(got) == sorted(before | during), "each request answered exactly once"
    assert all(r.get("source") == "mind" and not r.get("error") and len(r["items"]) == 10 for r in results)
    assert "recall unavailable" in text and rc == 0


def test_past_the_outage_limit_it_exits_3_without_commit_and_a_restart_answers(
    settings: Settings, milvus: MilvusServer, export_base: Path, tmp_path: Path
) -> None:
    s = _setup(settings, milvus)
    proc, log = _spawn(s, tmp_path, export_base / "export", "w1", "worker.outage_limit_s=4")
    try:
        _wait(lambda: b"restored" in log.read_bytes(), 90, "the worker to own its partitions")
        before = _send(s, "before", 10)
        _wait(lambda: set(_ids(s)) >= before and _committed(s) == len(before), 30, "answers before the outage")
        milvus.stop()
        during = _send(s, "during", 10)
        t0 = time.monotonic()
        rc = proc.wait(60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            stop_process(proc)
    text = log.read_text()
    assert rc == EXIT_OUTAGE, text[-3000:]
    assert took >= 4 and "recall failing for" in text  # OutageError -> App -> exit code 3
    assert _committed(s) == len(before), "the failed batch must not be committed"
    assert not set(_ids(s)) & during
    milvus.start()
    proc, log = _spawn(s, tmp_path, export_base / "export", "w2", "worker.outage_limit_s=120")
    try:
        _wait(lambda: set(_ids(s)) >= before | during, 90, "a restarted worker to answer them")
        time.sleep(1)
        got = _ids(s)
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert sorted(got) == sorted(before | during), "each request answered exactly once"
