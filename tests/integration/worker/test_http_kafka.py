"""The HTTP API beside the Kafka recall worker in one process (one Milvus Lite client), on the real broker:
abusive HTTP recalls do not take the Kafka path down (issue 13, item 2), and a drop of the served collection
stops both paths until /rec/insert_data restores it, after which the waiting Kafka requests are answered
(item 4)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from recall_testkit import read_topic

from mind_recall.settings import Settings
from mind_recall.wire import encode_request, user_key
from worker import kafka_io
from worker.app import App

pytestmark = pytest.mark.integration
ABUSE = json.dumps({"top_k": 500, "hist_item": [list(range(1, 400))] * 1024}).encode()  # the request
HEAVY = json.dumps({"top_k": 64, "hist_item": [list(range(1, 400))] * 384}).encode()  # 384 x 4 x 166: the budget


def _app(settings: Settings, export_base: Path, *extra: str) -> App:
    s = settings.replace("topics.partitions=1", "worker.batch_ms=5", "worker.session_timeout_ms=6000", *extra)
    return App(s, roles=("recall", "http"), export_dir=str(export_base / "export"), load_items=True).start()


def _results(s: Settings, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    want = set(ids)
    recs = read_topic(s, s.topics.recall_results, len(want), timeout_s,
                      match=lambda r: json.loads(r.value)["request_id"] in want)
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        body = json.loads(r.value)
        out.setdefault(body["request_id"], body)
    return out


def test_abusive_http_recalls_leave_the_kafka_path_serving(settings: Settings, export_base: Path) -> None:
    app = _app(settings, export_base)
    s = app.settings
    try:
        hist = [int(i) for i in np.load(export_base / "export" / "popular.npy")[:8]]
        sent: list[tuple[str, float]] = []
        stop = threading.Event()

        def kafka_load() -> None:  # a steady stream of small recall requests on Kafka
            p = kafka_io.make_producer(s)
            n = 0
            while not stop.is_set():
                rid = f"k{n}"
                p.send(s.topics.recall_requests, key=user_key(n % 20),
                       value=encode_request(rid, n % 20, 10, int(time.time() * 1000), hist))
                p.flush()
                sent.append((rid, time.monotonic()))
                n += 1
                time.sleep(0.05)
            p.close()

        calls: list[tuple[str, int, float, str]] = []
        loader = threading.Thread(target=kafka_load, daemon=True)
        loader.start()
        time.sleep(1.5)
        abuse_from = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=60,
                          headers={"Content-Type": "application/json"}) as c:
            for name, body in [("abuse", ABUSE)] * 4 + [("heavy", HEAVY)] * 2 + [("abuse", ABUSE)] * 2:
                t0 = time.monotonic()
                r = c.post("/rec/recall", content=body)
                calls.append((name, r.status_code, time.monotonic() - t0, r.text[:200]))
        abuse_to = time.monotonic()
        time.sleep(1.5)
        stop.set()
        loader.join(10)

        for name, code, took, text in calls:
            if name == "abuse":
                assert code == 413 and "http.max_recall_work" in text, (code, text)
                assert took < 3, took  # refused before any search (a 500 after 11 s before)
            else:
                assert code in (200, 504), (code, text)  # served in chunks, or out of time: never a 500
        results = _results(s, [rid for rid, _ in sent], 60)
        assert len(results) == len(sent), f"{len(sent) - len(results)} Kafka requests not answered"
        during = [rid for rid, t in sent if abuse_from <= t <= abuse_to]
        assert len(during) >= 5, (len(during), abuse_to - abuse_from)
        lat = {rid: results[rid]["produced_ts"] - results[rid]["request_ts"] for rid, _ in sent}
        for rid in during:
            assert results[rid]["source"] == "mind" and len(results[rid]["items"]) == 10, results[rid]
        worst = max(lat[rid] for rid in during)
        print(f"HTTP calls {[(n, c, round(t, 2)) for n, c, t, _ in calls]}; {len(during)} Kafka requests during "
              f"them, worst latency {worst} ms")
        assert worst < 5000, worst  # the Kafka path kept answering while HTTP was abused
        assert app.alive()
    finally:
        app.stop()


def test_drop_stops_both_paths_until_insert_restores_them(settings: Settings, export_base: Path) -> None:
    app = _app(settings, export_base, "worker.retry_backoff_s=0.2")
    s = app.settings
    hist = [int(i) for i in np.load(export_base / "export" / "popular.npy")[:8]]
    producer = kafka_io.make_producer(s)

    def ask(rid: str) -> None:
        producer.send(s.topics.recall_requests, key=user_key(7),
                      value=encode_request(rid, 7, 10, int(time.time() * 1000), hist))
        producer.flush()

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=60) as c:
            ask("before")
            assert len(_results(s, ["before"], 30)["before"]["items"]) == 10
            assert c.get("/healthz").status_code == 200
            coll = c.post("/qa/drop").json()["dropped"]
            health = c.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "not_serving", health.text
            assert c.post("/rec/recall", json={"top_k": 10, "hist_item": [hist]}).status_code == 503

            ask("during")
            assert _results(s, ["during"], 4) == {}  # the worker waits (retries), it answers nothing wrong
            assert app.alive()
            t_insert = int(time.time() * 1000)
            r = c.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
            assert r.status_code == 200 and r.json()["rows"] == 600 and r.json()["collection"] == coll, r.text
            assert c.get("/healthz").status_code == 200
            during = _results(s, ["during"], 30)["during"]
            assert during["source"] == "mind" and len(during["items"]) == 10, during
            assert during["produced_ts"] >= t_insert
            r = c.post("/rec/recall", json={"top_k": 10, "hist_item": [hist]})
            assert r.status_code == 200 and len(r.json()["results"][0]["items"]) == 10
            assert app.alive()
    finally:
        producer.close()
        app.stop()
