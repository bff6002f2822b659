"""Issue 13 on the HTTP API, against Milvus Lite and the session's small exported model: the recall work
budget (the exact abusive request), NaN/Infinity bodies, int64 ids, the alias in /rec/count, drop and insert
semantics, Milvus failures as 503/504, the OpenAPI error answers, --load-items' log and a port in use."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mind_recall.settings import Settings
from worker.http_api import create_app, make_service
from worker.metrics import Metrics
from worker.recall import load_into_store
from worker.store import ItemStore, StoreError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
JSON = {"Content-Type": "application/json"}
EXPORT_ROWS = 600  # recall_testkit.build_export: 600 items


@pytest.fixture
def served(milvus_uri: str, export_base: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Settings, ItemStore]]:
    """The API with the export inserted, the default limits (those of the issue's request) otherwise."""
    s = Settings().replace(f"milvus.uri={milvus_uri}", f"worker.export_dir={tmp_path / 'none'}")
    store = ItemStore(s.milvus)
    service = make_service(s, store=store, metrics=Metrics())
    with TestClient(create_app(s, service), raise_server_exceptions=False) as client:
        r = client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
        assert r.status_code == 200, r.text
        yield client, s, store
    store.close()


def _ok_recall(client: TestClient, top_k: int = 10) -> dict[str, Any]:
    r = client.post("/rec/recall", json={"top_k": top_k, "hist_item": [[3, 4, 5, 6]]})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_abusive_recall_is_refused_at_once_and_the_service_keeps_answering(
    served: tuple[TestClient, Settings, ItemStore], export_base: Path
) -> None:
    client, s, _ = served
    k = int(json.loads((export_base / "export" / "manifest.json").read_text())["k"])  # interests per history
    budget = s.http.max_recall_work
    body = json.dumps({"top_k": 500, "hist_item": [list(range(1, 400))] * 1024}).encode()
    assert 1_800_000 < len(body) < s.http.max_body_bytes  # the 1.9 MB request, within the body limit
    t0 = time.monotonic()
    r = client.post("/rec/recall", content=body, headers=JSON)
    took = time.monotonic() - t0
    assert r.status_code == 413, r.text[:300]
    detail = r.json()["detail"]
    hits = 500 + (399 + 3) // 4 + 2  # top_k + seen/4 + 2 = 602
    assert f"1024 histories x {k} interests = {1024 * k} vectors x {hits} hits" in detail, detail
    assert f"= {1024 * k * hits} > http.max_recall_work={budget}" in detail, detail
    assert took < 5, took  # parsed and refused; nothing reached Milvus (it took 11 s and a 500 before)
    t0 = time.monotonic()
    assert len(_ok_recall(client)["results"][0]["items"]) == 10
    assert time.monotonic() - t0 < 2
    # within the budget is served; one history more than the budget allows is refused
    r = client.post("/rec/recall", json={"top_k": 500, "hist_item": [list(range(1, 400))] * 20})
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["results"]) == 20
    over = budget // (k * hits) + 1
    r = client.post("/rec/recall", json={"top_k": 500, "hist_item": [list(range(1, 400))] * over})
    assert r.status_code == 413 and f"= {over * k * hits} >" in r.json()["detail"]
    # the hits count the seen ids (exclude_seen): 399 seen ids at top_k 62 are 62 + 100 + 2 hits
    over = budget // (k * 164) + 1
    assert over <= s.http.max_histories
    r = client.post("/rec/recall", json={"top_k": 62, "hist_item": [list(range(1, 400))] * over})
    assert r.status_code == 413 and "x 164 hits" in r.json()["detail"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"top_k": NaN, "hist_item": [[1]]}',
        b'{"top_k": Infinity, "hist_item": [[1]]}',
        b'{"top_k": -Infinity, "hist_item": [[1]]}',
        b'{"top_k": 5, "hist_item": [[NaN]]}',
        b'{"top_k": 5, "hist_item": [NaN]}',
        b'{"top_k": 5, "hist_item": NaN}',
        b'{"top_k": 1e400, "hist_item": [[1]]}',
        b"NaN",
        b'{"top_k": 5, "hist_item": [[1, 2, Infinity]], "x": NaN}',
    ],
)
def test_nan_and_infinity_are_422_with_a_json_detail(
    served: tuple[TestClient, Settings, ItemStore], raw: bytes
) -> None:
    client, _, _ = served
    r = client.post("/rec/recall", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]  # valid JSON (it failed to serialise the echoed NaN: a 500)
    for path in ("/rec/count", "/rec/insert_data", "/rec/drop", "/qa/drop"):
        bad = client.post(path, content=b'{"collection": NaN, "export_dir": Infinity}', headers=JSON)
        assert bad.status_code == 422 and bad.json()["detail"], (path, bad.text)


def test_ids_past_int64_say_so(served: tuple[TestClient, Settings, ItemStore]) -> None:
    client, _, _ = served
    for big in (2**63, 2**64 + 5, 10**30):
        r = client.post("/rec/recall", json={"top_k": 5, "hist_item": [[3, big]]})
        assert r.status_code == 422
        assert r.json()["detail"] == f"hist_item[0]: hist_item ids must fit in int64 (< 2^63 = {2**63}), got {big}"
    r = client.post("/rec/recall", json={"top_k": 5, "hist_item": [[-3]]})
    assert r.status_code == 422 and "must be > 0" in r.json()["detail"]
    r = client.post("/rec/recall", json={"top_k": 2**63, "hist_item": [[3]]})
    assert r.status_code == 422 and "top_k must be in [1, 500]" in r.json()["detail"]


def test_count_resolves_the_alias(served: tuple[TestClient, Settings, ItemStore]) -> None:
    client, s, store = served
    coll = store.live().collection  # type: ignore[union-attr]
    assert client.post("/rec/count", json={"collection": s.milvus.alias}).json() == {
        "collection": coll, "count": EXPORT_ROWS, "exists": True, "alias": s.milvus.alias,
    }
    assert client.post("/rec/count", json={"collection": coll}).json() == {
        "collection": coll, "count": EXPORT_ROWS, "exists": True,
    }
    assert client.post("/rec/count", json={"collection": "items_nope"}).json()["exists"] is False
    # /rec/drop takes the alias too: it drops the collection the alias names
    assert client.post("/rec/drop", json={"collection": s.milvus.alias}).json() == {"dropped": coll}
    assert client.post("/rec/count", json={"collection": s.milvus.alias}).json() == {
        "collection": s.milvus.alias, "count": 0, "exists": False,
    }


def test_drop_then_a_streamed_upsert_then_insert_restores_the_whole_export(
    served: tuple[TestClient, Settings, ItemStore], export_base: Path,
) -> None:
    """The issue's sequence: /qa/drop, one item upsert (the item writer re-creates the version's collection
    with one row), /rec/insert_data. insert answered rows 3000 while the store held 1."""
    client, _, store = served
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    coll = client.post("/qa/drop").json()["dropped"]
    health = client.get("/healthz")
    assert health.status_code == 503, health.text  # it said ok with model_version null
    assert health.json()["status"] == "not_serving" and "dropped" in health.json()["detail"]
    r = client.post("/rec/recall", json={"top_k": 5, "hist_item": [[3, 4]]})
    assert r.status_code == 503 and "insert_data" in r.json()["detail"]

    version = client.get("/healthz").json()["model_version"]
    assert version is None
    manifest = json.loads((export_base / "export" / "manifest.json").read_text())
    with np.load(export_base / "export" / "items.npz") as z:
        ids, vecs = z["ids"].astype(np.int64), z["vectors"].astype(np.float32)
    streamed = np.full((1, vecs.shape[1]), 0.25, np.float32)
    assert store.ensure_collection(manifest["model_version"], vecs.shape[1]) == coll  # as the item writer does
    store.upsert(coll, ids[:1], streamed, np.array([2**40], np.int64))
    assert store.count(coll) == 1

    r = client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == EXPORT_ROWS == store.count(coll) and r.json()["inserted"] == EXPORT_ROWS - 1
    assert client.post("/rec/count").json() == {"collection": coll, "count": EXPORT_ROWS, "exists": True}
    _, got = store.get_vectors(ids[:1], coll)
    np.testing.assert_allclose(got[0], streamed[0])  # the streamed update is kept, not reverted
    assert len(_ok_recall(client, 50)["results"][0]["items"]) == 50
    assert client.get("/healthz").status_code == 200
    # a second insert writes nothing and still answers the store's count
    again = client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")}).json()
    assert again["rows"] == EXPORT_ROWS and again["inserted"] == 0
    # a collection dropped behind the API's back (another process, a server) is reported, not "ok"
    store.drop(coll, force=True)
    time.sleep(0.6)  # /healthz asks Milvus at most every 0.5 s (http_api.OPEN_CACHE_S)
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "collection_missing"


def test_milvus_failures_are_503_and_slow_searches_504(
    served: tuple[TestClient, Settings, ItemStore], monkeypatch: pytest.MonkeyPatch, export_base: Path,
) -> None:
    client, s, store = served
    real_search = store.search

    def down(*_a: Any, **_k: Any) -> Any:
        raise StoreError("milvus search failed (test): connection refused")

    monkeypatch.setattr(store, "search", down)
    r = client.post("/rec/recall", json={"top_k": 5, "hist_item": [[3, 4]]})
    assert r.status_code == 503 and "milvus unavailable" in r.json()["detail"], r.text
    monkeypatch.setattr(store, "list_collections", down)
    for path in ("/rec/count", "/rec/drop"):
        r = client.post(path)
        assert r.status_code == 503 and r.json()["detail"], (path, r.text)
    assert client.get("/healthz").json()["status"] == "milvus_unavailable"
    monkeypatch.undo()

    calls = []

    def slow(*a: Any, **k: Any) -> Any:  # each chunk takes longer than the whole recall may
        calls.append(len(a[0]))
        time.sleep(0.3)
        return real_search(*a, **k)

    monkeypatch.setattr(store, "search", slow)
    short = s.replace("milvus.timeout_s=0.2")  # the deadline of one recall
    service = make_service(short, store=store, export_dir=str(export_base / "export"))
    with TestClient(create_app(short, service), raise_server_exceptions=False) as fast:
        r = fast.post("/rec/recall", json={"top_k": 5, "hist_item": [[3, 4]] * 200})
    assert r.status_code == 504 and "milvus.timeout_s=0.2" in r.json()["detail"], r.text
    assert calls == [256]  # 800 interests in chunks of milvus.search_chunk: stopped after the first
    monkeypatch.undo()
    assert len(_ok_recall(client)["results"][0]["items"]) == 10


def test_openapi_documents_every_error_answer_and_qa_drop(served: tuple[TestClient, Settings, ItemStore]) -> None:
    client, _, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    assert "/qa/drop" in paths
    want = {
        "/rec/recall": {"401", "413", "422", "503", "504"},
        "/rec/insert_data": {"401", "403", "404", "413", "422", "503"},
        "/rec/count": {"401", "413", "422", "503"},
        "/rec/drop": {"401", "403", "404", "413", "422", "503"},
        "/qa/drop": {"401", "403", "404", "413", "422", "503"},
    }
    for path, codes in want.items():
        assert codes <= set(paths[path]["post"]["responses"]), path
    assert "503" in paths["/healthz"]["get"]["responses"]


def test_load_items_logs_what_it_did(settings: Settings, export_base: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--load-items fills only a new or empty collection (docs/recall.md) and says which it did."""
    store = ItemStore(settings.milvus)
    try:
        with caplog.at_level(logging.INFO, logger="worker.recall"):
            coll, written = load_into_store(store, export_base / "export")
            assert written == EXPORT_ROWS and f"loaded {EXPORT_ROWS} item vectors of {EXPORT_ROWS}" in caplog.text
            store.delete(coll, np.array([1, 2], np.int64))
            caplog.clear()
            assert load_into_store(store, export_base / "export") == (coll, 0)
            assert "loaded" not in caplog.text and f"already holds {EXPORT_ROWS - 2} rows" in caplog.text
            assert store.count(coll) == EXPORT_ROWS - 2  # deleted items stay deleted
    finally:
        store.close()
    doc = " ".join((ROOT / "docs" / "recall.md").read_text().split())
    assert "only a new or empty collection" in doc and "already holds the export's row count" not in doc


def test_a_port_in_use_fails_at_once_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIND_RECALL__")}
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "-o", f"http.port={port}",
             "-o", f"milvus.uri={tmp_path / 'milvus.db'}", "-o", f"worker.export_dir={tmp_path / 'none'}"],
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
        )
        took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"mind-recall: HTTP API cannot listen on 127.0.0.1:{port} (http.host / http.port): "
                     "Address already in use"], proc.stderr
    assert took < 20, took  # it waited 30 s for a server that never started
