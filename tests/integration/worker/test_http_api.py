"""The HTTP API over Milvus Lite and a small trained+exported MIND model: TestClient for every endpoint,
auth and limits, and one real uvicorn server on a free port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from recall_testkit import Reference, same_ranking, train_histories

from mind_recall.settings import Settings
from worker.http_api import create_app, make_service
from worker.metrics import Metrics
from worker.store import ItemStore

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token"


@pytest.fixture
def api(milvus_uri: str, export_base: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Settings, ItemStore]]:
    s = Settings().replace(
        f"milvus.uri={milvus_uri}",
        f"worker.export_dir={tmp_path / 'none'}",
        f"http.token={TOKEN}",
        "http.max_body_bytes=20000",
        "http.max_histories=4",
        "worker.max_hist=30",
        "worker.max_top_k=60",
        "worker.exclude_seen=false",
    )
    store = ItemStore(s.milvus)
    service = make_service(s, store=store, metrics=Metrics())
    with TestClient(create_app(s, service)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, s, store
    store.close()


def test_every_endpoint_and_results_match_the_evaluation_path(
    api: tuple[TestClient, Settings, ItemStore],
    export_base: Path,
    reference: Reference,
) -> None:
    client, _, _ = api
    assert client.get("/healthz").json()["model_version"] is None
    assert client.post("/rec/recall", json={"top_k": 5, "hist_item": [[1]]}).status_code == 503
    r = client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["rows"] == 600 and info["model_version"] == reference.tower.model_version
    assert client.post("/rec/count").json() == {
        "collection": info["collection"],
        "count": 600,
        "exists": True,
    }
    hists = [h[-20:] for _, h in sorted(train_histories(export_base).items())[:3]]
    r = client.post("/rec/recall", json={"top_k": 25, "hist_item": [h.tolist() for h in hists] + [[]]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == reference.tower.model_version and len(body["results"]) == 4
    for h, res in zip(hists, body["results"], strict=False):
        assert res["source"] == "mind" and same_ranking(res["items"], reference.recall(h, 25, exclude_seen=False))
    assert body["results"][3]["source"] == "cold_start"
    assert client.get("/healthz").json()["model_version"] == reference.tower.model_version
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "mind_recall_recall_requests_total" in metrics.text
    assert client.get("/docs").status_code == 200 and "/rec/recall" in client.get("/openapi.json").text
    assert client.post("/qa/drop", json={"collection": "nope"}).status_code == 404
    assert client.post("/rec/drop").json() == {"dropped": info["collection"]}
    assert client.post("/rec/count", json={"collection": info["collection"]}).json()["exists"] is False
    assert client.post("/rec/recall", json={"top_k": 5, "hist_item": [[1]]}).status_code == 503
    # the alias route drops too
    client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
    assert client.post("/qa/drop").json() == {"dropped": info["collection"]}
    assert client.post("/rec/insert_data", json={"export_dir": "/nonexistent"}).status_code == 404


def test_auth_and_limits(api: tuple[TestClient, Settings, ItemStore], export_base: Path) -> None:
    client, _, _ = api
    client.post("/rec/insert_data", json={"export_dir": str(export_base / "export")})
    ok = {"top_k": 5, "hist_item": [[1, 2]]}
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        r = client.post("/rec/recall", json=ok, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/rec/count", headers={"Authorization": ""}).status_code == 401
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200  # probes stay open
    assert client.post("/rec/recall", json=ok).status_code == 200
    for bad in (
        {"top_k": 0, "hist_item": [[1]]},
        {"top_k": 61, "hist_item": [[1]]},
        {"top_k": "5", "hist_item": [[1]]},
        {"top_k": 5, "hist_item": [[1]] * 5},
        {"top_k": 5, "hist_item": []},
        {"top_k": 5, "hist_item": [[0]]},
        {"top_k": 5, "hist_item": [list(range(1, 32))]},
        {"top_k": 5, "hist_item": [["a"]]},
        {"top_k": 5},
    ):
        assert client.post("/rec/recall", json=bad).status_code == 422, bad
    big = json.dumps({"top_k": 5, "hist_item": [[1] * 30], "pad": "x" * 20000})
    r = client.post("/rec/recall", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is checked too
        for _ in range(30):
            yield b" " * 1000

    r = client.post("/rec/recall", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/nope/12345").status_code == 404
    text = client.get("/metrics").text  # every request above is timed, by route and status class
    for endpoint, code, n in (("/rec/recall", "2xx", 1), ("/rec/recall", "4xx", 3 + 9 + 2), ("/rec/count", "4xx", 1),
                              ("/healthz", "2xx", 1), ("/rec/insert_data", "2xx", 1), ("other", "4xx", 1)):
        line = f'mind_recall_http_request_seconds_count{{code="{code}",endpoint="{endpoint}"}} {float(n)}'
        assert line in text, line
    assert "12345" not in text  # paths outside the API are not label values
    assert client.post("/rec/recall", content=b"{nope", headers={"Content-Type": "application/json"}).status_code == 422


def test_admin_endpoints_need_a_token_off_loopback(settings: Settings, export_base: Path) -> None:
    """Without http.token, insert/drop answer only when the API is bound to loopback; recall stays open."""
    store = ItemStore(settings.milvus)
    try:
        for host, admin_status in (("0.0.0.0", 403), ("127.0.0.1", 200)):
            s = settings.replace(f"http.host={host}", f"worker.export_dir={export_base / 'export'}")
            with TestClient(create_app(s, make_service(s, store=store, metrics=Metrics()))) as client:
                body = {"export_dir": str(export_base / "export")}
                assert client.post("/rec/insert_data", json=body).status_code == admin_status, host
                assert client.post("/rec/drop").status_code in ((403,) if admin_status == 403 else (200, 404)), host
                assert client.post("/qa/drop").status_code in ((403,) if admin_status == 403 else (200, 404)), host
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_uvicorn_server(milvus_uri: str, export_base: Path, reference: Reference) -> None:
    port = _free_port()
    s = Settings().replace(
        f"milvus.uri={milvus_uri}",
        f"worker.export_dir={export_base / 'export'}",
        f"http.port={port}",
        f"http.token={TOKEN}",
    )
    store = ItemStore(s.milvus)
    service = make_service(s, store=store, metrics=Metrics(), load_items=True)
    server = uvicorn.Server(uvicorn.Config(create_app(s, service), host=s.http.host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{base}/healthz").json()["model_version"] == reference.tower.model_version
        h = [3, 4, 5, 6]
        r = httpx.post(
            f"{base}/rec/recall",
            json={"top_k": 10, "hist_item": [h]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200
        import numpy as np

        want = reference.recall(np.array(h), 10, exclude_seen=True)
        assert same_ranking(r.json()["results"][0]["items"], want)
        assert httpx.post(f"{base}/rec/recall", json={"top_k": 10, "hist_item": [h]}).status_code == 401
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
