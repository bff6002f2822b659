"""Hot model rollout on the real broker and Milvus Lite: an App serving version A under load (Kafka and
HTTP) switches to version B when `items rollout` announces it, without a restart. Every request is answered,
every result is of exactly one version, and the switch comes within a bound. A corrupt export announced
next leaves B serving, with an error and a metric. ``gc`` then drops A's collection.

Version B is export A with new ids (+100000), other vectors and its own model_version: a result that mixed
versions would hold ids of both ranges."""

from __future__ import annotations

import json
import shutil
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
from worker.model_watch import Announcement, announce
from worker.rollout import announce_live, gc, rollout

pytestmark = pytest.mark.integration
SHIFT = 100_000


def _version_b(export_a: Path, out: Path) -> tuple[Path, str]:
    shutil.copytree(export_a, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model_version"] = version = "b" + manifest["model_version"][1:]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with np.load(out / "items.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["ids"] = arrays["ids"] + SHIFT
    arrays["vectors"] = arrays["vectors"][::-1].copy()  # other vectors for the same ids
    np.savez(out / "items.npz", **arrays)
    np.save(out / "popular.npy", np.load(out / "popular.npy") + SHIFT)
    return out, version


def _range_of(items: list[dict[str, Any]]) -> set[str]:
    return {"b" if i["item_id"] >= SHIFT else "a" for i in items}


class Load:
    """Recall requests on Kafka and HTTP calls, at a steady pace, until stopped."""

    def __init__(self, settings: Settings, http_port: int, hist: list[int]) -> None:
        self.s, self.port, self.hist = settings, http_port, hist
        self.sent: list[str] = []
        self.http: list[tuple[float, int, dict[str, Any]]] = []  # (time, status, body)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._kafka, self._http)]
        for t in self.threads:
            t.start()

    def _kafka(self) -> None:
        p = kafka_io.make_producer(self.s)
        n = 0
        while not self._stop.is_set():
            rid = f"r{n}"
            p.send(self.s.topics.recall_requests, key=user_key(n % 50),
                   value=encode_request(rid, n % 50, 10, int(time.time() * 1000), self.hist))
            self.sent.append(rid)
            n += 1
            p.flush()
            time.sleep(0.03)
        p.close()

    def _http(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as c:
            while not self._stop.is_set():
                r = c.post("/rec/recall", json={"top_k": 10, "hist_item": [self.hist]})
                self.http.append((time.monotonic(), r.status_code, r.json()))
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(30)


def test_a_rollout_switches_live_under_load_and_a_corrupt_one_keeps_the_old(
    settings: Settings, export_base: Path, tmp_path: Path
) -> None:
    s = settings.replace("topics.partitions=1", "worker.batch_ms=5", "worker.session_timeout_ms=6000",
                         "worker.exclude_seen=false", "worker.rollout_ready_timeout_s=30")
    export_a = export_base / "export"
    export_b, version_b = _version_b(export_a, tmp_path / "export-b")
    version_a = json.loads((export_a / "manifest.json").read_text())["model_version"]
    with np.load(export_a / "items.npz") as z:
        ids_a = z["ids"]
    hist = [int(i) for i in ids_a[:6]] + [int(i) + SHIFT for i in ids_a[:6]]  # known to A, resp. B, only

    app = App(s, roles=("recall", "http"), export_dir=str(export_a), load_items=True).start()
    try:
        assert app.served_version() == version_a
        load = Load(s, app.http_port or 0, hist)
        time.sleep(3)  # A serves under load
        t_switch = time.monotonic()
        live = rollout(app.store, export_b)  # fills B's collection, switches the alias ...
        announce_live(s, app.store, live, export_b)  # ... and tells the workers
        assert app.watcher.switched.wait(60), "no switch within 60 s"
        switch_s = time.monotonic() - t_switch
        assert app.served_version() == version_b
        time.sleep(3)  # B serves under load
        load.stop()

        results = read_topic(s, s.topics.recall_results, len(load.sent), 60,
                             match=lambda r: json.loads(r.value)["request_id"].startswith("r"))
        by_id = {}
        for r in results:
            body = json.loads(r.value)
            by_id.setdefault(body["request_id"], body)
        assert set(load.sent) <= set(by_id), f"{len(set(load.sent) - set(by_id))} requests not answered"
        versions = [by_id[rid]["model_version"] for rid in load.sent]  # in the order they were sent
        for rid in load.sent:
            body = by_id[rid]
            assert body["source"] == "mind" and body["items"], body
            want = "a" if body["model_version"] == version_a else "b"
            assert body["model_version"] in (version_a, version_b)
            assert _range_of(body["items"]) == {want}, body  # hits, item cache and version agree
        assert versions[0] == version_a and versions[-1] == version_b
        switch_at = versions.index(version_b)
        assert set(versions[switch_at:]) == {version_b}, "a later request was answered by the old version"

        assert all(code == 200 for _, code, _ in load.http), [c for _, c, _ in load.http if c != 200][:3]
        http_versions = [body["model_version"] for _, _, body in load.http]
        for _, _, body in load.http:
            want = "a" if body["model_version"] == version_a else "b"
            assert _range_of(body["results"][0]["items"]) == {want}
        assert http_versions[0] == version_a and http_versions[-1] == version_b
        print(f"switch in {switch_s:.1f}s; {len(load.sent)} Kafka requests ({switch_at} by A), "
              f"{len(load.http)} HTTP calls, all answered")

        # a corrupt export announced next: B keeps serving, with an error and a metric
        broken = tmp_path / "export-c"
        shutil.copytree(export_b, broken)
        manifest = json.loads((broken / "manifest.json").read_text())
        manifest["model_version"] = "c-broken"
        (broken / "manifest.json").write_text(json.dumps(manifest))
        for f in broken.iterdir():
            if f.name not in ("manifest.json", "items.npz", "popular.npy"):
                f.write_bytes(b"not a model") if f.is_file() else shutil.rmtree(f)
        announce(s, Announcement("c-broken", str(broken), 10, int(time.time() * 1000), (version_a,)))
        reg = app.metrics.registry if app.metrics else None
        assert reg is not None
        deadline = time.monotonic() + 60
        while reg.get_sample_value("mind_recall_model_rollouts_total", {"outcome": "failed"}) != 1:
            assert time.monotonic() < deadline, "the broken announcement was not reported"
            time.sleep(0.2)
        assert reg.get_sample_value("mind_recall_model_rollout_failed") == 1
        assert reg.get_sample_value("mind_recall_model_rollouts_total", {"outcome": "ok"}) == 1
        assert app.served_version() == version_b and app.alive()
        r = httpx.post(f"http://127.0.0.1:{app.http_port}/rec/recall", json={"top_k": 5, "hist_item": [hist]})
        assert r.status_code == 200 and r.json()["model_version"] == version_b

        # gc: the retired version's collection goes once the grace period is over, the live one stays
        announce_live(s, app.store, live, export_b)  # B again (as after a fixed retry): A is retired
        assert gc(s, app.store, grace_s=3600)["dropped"] == []
        out = gc(s, app.store, grace_s=0)
        assert out["dropped"] == [app.store.collection_name(version_a)]
        assert app.store.collection_name(version_b) in app.store.list_collections()
    finally:
        app.stop()
