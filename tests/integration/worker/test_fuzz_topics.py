"""Fuzz every input topic on the real broker and Milvus Lite: >= 10k random and mutated records each to
clicks, recall-requests and item-embeddings, through the recall worker and the item writer in this process.

Every record is accounted for: a valid one is processed (a click is applied to the history, a request is
answered with a result, an item is upserted into Milvus), a bad one lands in the DLQ (or, for a request
whose request_id is readable, gets an error result); and the workers are alive at the end. The generator is
seeded; each record is labelled valid, bad or unknown (random byte flips, which may or may not still parse):
labelled records must land on their side, unknown ones on exactly one side.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from recall_testkit import Running, committed_total

from mind_recall.item_wire import encode_item_event
from mind_recall.settings import Settings
from mind_recall.wire import encode_click, encode_request
from worker import kafka_io
from worker.item_writer import ItemWriter
from worker.items import load_export
from worker.store import ItemStore

pytestmark = pytest.mark.integration

N = 10_000
MAX_RECORD = 4096  # worker.max_record_bytes here, so "oversized" records stay cheap
VALID, BAD, UNKNOWN = "valid", "bad", "unknown"
Record = tuple[bytes | None, bytes | None, str]  # key, value, label


# -- mutations shared by every topic ---------------------------------------------------------------
def _flip(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def _byte_mutations(rng: random.Random, key: bytes, raw: bytes) -> Record:
    """A mutation of a valid JSON object's bytes: labelled bad where it can never parse, else unknown."""
    kind = rng.randrange(9)
    if kind == 0:
        return key, raw[: rng.randrange(1, len(raw))], BAD  # a proper prefix of an object: never JSON
    if kind == 1:
        return key, b"\xff" + raw, BAD  # not UTF-8
    if kind == 2:
        return key, b"", BAD
    if kind == 3:
        return key, None, BAD  # a null value
    if kind == 4:
        return key, b"[" * 100_000 + b"]" * 100_000, BAD  # absurd nesting, and oversized
    if kind == 5:
        return key, json.dumps([json.loads(raw)]).encode(), BAD  # an array, not an object
    if kind == 6:
        return key, raw[:-1] + b', "pad": "' + b"x" * MAX_RECORD + b'"}', BAD  # oversized
    if kind == 7:
        return key, bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))), UNKNOWN
    return key, _flip(rng, raw), UNKNOWN


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # allow_nan: NaN/Infinity literals go out as Python writes them


# -- per-topic generators ---------------------------------------------------------------------------
def clicks(rng: random.Random, item_ids: np.ndarray) -> list[Record]:
    out: list[Record] = []
    for _ in range(N):
        u, i = rng.randrange(200), int(rng.choice(item_ids))
        key, raw = str(u).encode(), encode_click(u, i, 1_000 + rng.randrange(10**6))
        r = rng.random()
        if r < 0.5:
            out.append((key, raw, VALID))
        elif r < 0.75:
            out.append(_byte_mutations(rng, key, raw))
        else:
            bad = rng.choice([
                {"user_id": -1, "item_id": i}, {"user_id": "7", "item_id": i}, {"user_id": 2**63, "item_id": i},
                {"user_id": u, "item_id": 0}, {"user_id": u, "item_id": float("nan")}, {"user_id": u},
                {"item_id": i}, {"user_id": u, "item_id": i, "ts": -5}, {"user_id": u, "item_id": i, "ts": "x"},
                {"user_id": 1.5, "item_id": i}, {"user_id": True, "item_id": i}, {"user_id": None, "item_id": i},
                {"user_id": u, "item_id": float("inf")}, {"user_id": u, "item_id": -(2**70)},
            ])
            out.append((key, _json(bad), BAD))
    return out


def requests(rng: random.Random, item_ids: np.ndarray) -> tuple[list[Record], dict[int, str]]:
    """Records, and for each index whose request_id must be answered (valid, or an error result) that id."""
    out: list[Record] = []
    answered: dict[int, str] = {}
    for n in range(N):
        u = rng.randrange(200)
        rid = f"fz-{n}"
        hist = [int(x) for x in rng.sample(list(item_ids), rng.randint(0, 8))] if rng.random() < 0.5 else None
        key, raw = str(u).encode(), encode_request(rid, u, rng.randint(1, 50), int(time.time() * 1000), hist)
        r = rng.random()
        if r < 0.4:
            out.append((key, raw, VALID))
            answered[n] = rid
        elif r < 0.6:  # a readable request_id and a bad field: an error result, not the DLQ
            bad = rng.choice([
                {"top_k": 0}, {"top_k": 10**6}, {"top_k": "5"}, {"top_k": float("nan")}, {"top_k": 2.5},
                {"hist_item": [0]}, {"hist_item": [-1]}, {"hist_item": ["1"]}, {"hist_item": [2**63]},
                {"hist_item": list(range(1, 52))}, {"hist_item": "1,2"}, {"hist_item": [float("nan")]},
                {"user_id": -3}, {"user_id": "u"}, {"user_id": None}, {"ts": -1}, {"ts": float("inf")},
            ])
            obj = {**json.loads(raw), **bad}
            out.append((key, _json(obj), VALID))  # "valid" here: it must be answered (with an error)
            answered[n] = rid
        elif r < 0.8:
            bad = rng.choice([{"request_id": None}, {"request_id": 5}, {"request_id": ""},
                              {"request_id": "r" * 201}, {"request_id": ["x"]}])
            out.append((key, _json({**json.loads(raw), **bad}), BAD))
        else:
            out.append(_byte_mutations(rng, key, raw))
    return out, answered


def items(rng: random.Random, version: str, dim: int) -> tuple[list[Record], dict[int, np.ndarray]]:
    """Records, and the last valid vector per item id (ids 100000+ : never touched by anything else)."""
    out: list[Record] = []
    last: dict[int, np.ndarray] = {}
    for _ in range(N):
        i = 100_000 + rng.randrange(3000)
        vec = np.asarray([rng.uniform(-1, 1) for _ in range(dim)], np.float32)
        key, raw = encode_item_event(i, vec, version, 1_000 + rng.randrange(10**6), binary=rng.random() < 0.3)
        assert raw is not None
        r = rng.random()
        if r < 0.5:
            out.append((key, raw, VALID))
            last[i] = vec
            continue
        if r < 0.75:
            k, v, label = _byte_mutations(rng, key, raw)
            if v is None:
                k = b"not-an-id"  # a tombstone with a numeric key is a valid delete: keep it bad
            out.append((k, v, label))
            continue
        body = json.loads(raw)
        bad = rng.choice([
            {"vector": [0.5] * (dim + 1)}, {"vector": [float("nan")] * dim}, {"vector": [1e39] * dim},
            {"vector": "0,1"}, {"vector": []}, {"model_version": "no-such-version"}, {"model_version": 5},
            {"model_version": ""}, {"item_id": -4}, {"item_id": "12"}, {"item_id": 2**64}, {"ts": -1},
            {"op": "merge"}, {"vector_b64": "!!!"}, {"vector_b64": "AAAA"},
        ])
        body.pop("vector", None) if "vector_b64" in bad else body.pop("vector_b64", None)
        body.update(bad)
        if rng.random() < 0.2:
            body, key = json.loads(raw), str(i + 1).encode()  # a key other than the item id
        out.append((key, _json(body), BAD))
    return out, last


# -- the run ----------------------------------------------------------------------------------------
def _produce(settings: Settings, topic: str, records: list[Record]) -> list[int]:
    """Send in order to partition 0 and return each record's offset."""
    p = kafka_io.make_producer(settings, linger_ms=20)
    sent = [p.send(topic, key=k, value=v, partition=0) for k, v, _ in records]
    p.flush()
    assert all(d.succeeded() for d in sent)
    c = kafka_io.make_reader(settings)
    try:
        (low, high), = c.watermarks([kafka_io.TopicPartition(topic, 0)]).values()
    finally:
        c.close()
    assert high - low == len(records)
    return list(range(low, high))


def _read_to_end(settings: Settings, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` up to its end offsets as of now."""
    c = kafka_io.make_reader(settings)
    try:
        parts = kafka_io.topic_partitions(c, topic)
        end = {tp: high for tp, (_low, high) in c.watermarks(parts).items()}
        c.assign_from(dict.fromkeys(parts))
        got: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while not all(c.read_up_to(tp, end[tp]) for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for recs in c.poll(timeout_ms=200, max_records=5000).values():
                got.extend(recs)
        return got
    finally:
        c.close()


def _committed(settings: Settings, group: str, topic: str) -> int:
    return committed_total(settings, group, topic)


def _dead_offsets(dlq: list[Any], topic: str) -> set[int]:
    out = set()
    for r in dlq:
        h = dict(r.headers)
        if h["source_topic"].decode() == topic:
            out.add(int(h["source_offset"]))
    return out


def test_fuzz_every_input_topic(settings: Settings, export_base: Path, store: ItemStore) -> None:
    s = settings.replace(
        f"worker.export_dir={export_base / 'export'}", "topics.partitions=1", "worker.batch_ms=5",
        "worker.session_timeout_ms=6000", f"worker.max_record_bytes={MAX_RECORD}", "worker.exclude_seen=false",
        "worker.max_hist=50",
    )
    version, dim, item_ids, _vecs, _ = load_export(export_base / "export")
    rng = random.Random(13)
    click_recs = clicks(rng, item_ids)
    req_recs, answered = requests(rng, item_ids)
    item_recs, last = items(rng, version, dim)
    assert min(len(click_recs), len(req_recs), len(item_recs)) >= 10_000

    run = Running(s, store)
    writer = ItemWriter(s, run.metrics, store=store)
    writer_error: list[BaseException] = []
    writer_thread = threading.Thread(target=lambda: _guard(writer.run, writer_error), daemon=True)
    writer_thread.start()
    try:
        t0 = time.monotonic()
        click_off = _produce(s, s.topics.clicks, click_recs)
        req_off = _produce(s, s.topics.recall_requests, req_recs)
        item_off = _produce(s, s.topics.item_embeddings, item_recs)

        # done when the recall group committed both topics to their end (results and dead letters are
        # flushed before a commit) and the item writer committed every record
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (
            _committed(s, s.worker.group_id, s.topics.clicks) == click_off[-1] + 1
            and _committed(s, s.worker.group_id, s.topics.recall_requests) == req_off[-1] + 1
            and writer.committed == len(item_recs)
        ):
            assert run.thread.is_alive() and writer_thread.is_alive(), (run.error, writer_error)
            time.sleep(0.5)
        assert writer.committed == len(item_recs), "the item writer did not get through every record"
        assert _committed(s, s.worker.group_id, s.topics.recall_requests) == req_off[-1] + 1
        took = time.monotonic() - t0
        results = _read_to_end(s, s.topics.recall_results)
        dlq = _read_to_end(s, s.topics.dlq)

        # every worker alive, no bug surfaced
        assert run.thread.is_alive() and run.error is None and writer_thread.is_alive() and not writer_error

        # recall-requests: every readable request_id answered, labelled bad ones dead-lettered, and every
        # record counted exactly once under one outcome (the unknown ones included)
        by_id: dict[str, dict[str, Any]] = {}
        for r in results:
            body = json.loads(r.value)
            by_id.setdefault(body["request_id"], body)
        dead_req = _dead_offsets(dlq, s.topics.recall_requests)
        for n, (_k, _v, label) in enumerate(req_recs):
            off, rid = req_off[n], answered.get(n)
            if rid is not None:
                assert rid in by_id and off not in dead_req, (n, req_recs[n])
            elif label == BAD:
                assert off in dead_req, (n, req_recs[n])
        outcomes = {o: run.metrics.registry.get_sample_value("mind_recall_recall_requests_total", {"outcome": o}) or 0
                    for o in ("ok", "cold_start", "error", "dead_letter")}
        assert sum(outcomes.values()) == len(req_recs), outcomes
        assert outcomes["dead_letter"] == len(dead_req)
        assert outcomes["ok"] + outcomes["cold_start"] >= 0.35 * N

        # clicks: applied + dead-lettered == every record, and the labelled ones on their side
        dead_clicks = _dead_offsets(dlq, s.topics.clicks)
        clicks_total = run.metrics.registry.get_sample_value("mind_recall_clicks_total") or 0
        assert clicks_total + len(dead_clicks) == len(click_recs)
        for n, (_k, _v, label) in enumerate(click_recs):
            if label != UNKNOWN:
                assert (click_off[n] in dead_clicks) == (label == BAD), (n, click_recs[n])

        # item-embeddings: labelled ones on their side; every valid item's last vector is in Milvus
        dead_items = _dead_offsets(dlq, s.topics.item_embeddings)
        for n, (_k, _v, label) in enumerate(item_recs):
            if label != UNKNOWN:
                assert (item_off[n] in dead_items) == (label == BAD), (n, item_recs[n])
        ids = np.array(sorted(last), np.int64)
        got_ids, got = store.get_vectors(ids)
        assert sorted(got_ids.tolist()) == ids.tolist()
        flipped = {int(k) for k, _v, label in item_recs if label == UNKNOWN and k is not None and k.isdigit()}
        order = np.argsort(got_ids)
        for i, v in zip(got_ids[order].tolist(), got[order], strict=True):
            if i not in flipped:  # a flipped record of the same id may legitimately have won
                np.testing.assert_allclose(v, last[i], rtol=1e-6)
        print(f"fuzz: {3 * N} records, {len(dlq)} dead letters, {len(by_id)} answered, {took:.1f}s")
    finally:
        writer.stop()
        writer_thread.join(30)
        run.stop()


def _guard(fn: Callable[[], Any], errors: list[BaseException]) -> None:
    try:
        code = fn()
        if code:
            errors.append(RuntimeError(f"exit code {code}"))
    except BaseException as e:
        errors.append(e)
