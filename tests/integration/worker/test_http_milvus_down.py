"""The HTTP API against a Milvus that goes away (Milvus Lite's gRPC server on a port, stopped and started
again by the test, as in test_recall_milvus_outage.py): every endpoint answers 503 with a JSON detail while it
is down, never 500, and recall serves again once it is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from recall_testkit import MilvusServer

from mind_recall.settings import Settings
from worker.http_api import create_app, make_service
from worker.metrics import Metrics
from worker.store import ItemStore

pytestmark = pytest.mark.integration


def test_milvus_down_is_503_on_every_endpoint_and_recall_comes_back(export_base: Path, tmp_path: Path) -> None:
    milvus = MilvusServer(tmp_path / "served.db")
    s = Settings().replace(f"milvus.uri=http://127.0.0.1:{milvus.port}", "milvus.timeout_s=2",
                           f"worker.export_dir={tmp_path / 'none'}")
    store = ItemStore(s.milvus)
    try:
        service = make_service(s, store=store, metrics=Metrics())
        with TestClient(create_app(s, service), raise_server_exceptions=False) as client:
            r = client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
            assert r.status_code == 200, r.text
            ok = {"top_k": 10, "hist_item": [[3, 4, 5]]}
            assert client.post("/rec/recall", json=ok).status_code == 200

            milvus.stop()
            time.sleep(0.6)  # past /healthz's 0.5 s reuse of its last Milvus check
            t0 = time.monotonic()
            for method, path, body in [("POST", "/rec/recall", ok), ("POST", "/rec/count", None),
                                       ("POST", "/rec/drop", {"collection": "items_x"}),
                                       ("POST", "/rec/insert_data", {"export_dir": str(export_base / "export")}),
                                       ("GET", "/healthz", None)]:
                r = client.request(method, path, json=body)
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.json()["detail"], path
            assert client.get("/healthz").json()["status"] == "milvus_unavailable"
            assert time.monotonic() - t0 < 60  # each call gives up within milvus.timeout_s (and its retries)

            milvus.start()
            deadline = time.monotonic() + 30
            while (r := client.post("/rec/recall", json=ok)).status_code != 200:
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
                time.sleep(0.5)
            assert len(r.json()["results"][0]["items"]) == 10
            time.sleep(0.6)
            assert client.get("/healthz").status_code == 200
    finally:
        store.close()
        milvus.stop()
