"""Fuzz the HTTP API in-process on Milvus Lite: 10,000 random or mutated requests to each endpoint (seeded,
interleaved, plus broken export directories a client may name), none may answer 500; every answer is 2xx,
or 4xx / 503 with a JSON ``detail``; a valid recall is answered afterwards. Takes 60-200 s on two shared
cores (httpx's in-process ASGI transport: about half of TestClient's cost per request); only a hang fails
it (the timeout below), its speed is not asserted: a noisy CI machine once took 195 s."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mind_recall.settings import Settings
from worker.http_api import create_app, make_service
from worker.metrics import Metrics
from worker.store import ItemStore

pytestmark = pytest.mark.integration
TOKEN = "fuzz-token"
PER_ENDPOINT = 10_000
SEED = 13
ENDPOINTS = ("/rec/recall", "/rec/insert_data", "/rec/count", "/rec/drop", "/qa/drop", "/healthz", "/metrics")
SPECIAL_INTS = [0, -1, 1, 2, 60, 61, 599, 600, 601, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]
SPECIAL_FLOATS = [float("nan"), float("inf"), float("-inf"), 1.5, -0.0, 1e308, 5.0]
SPECIAL_STRS = ["", "5", "items", "items_", "\x00", "../../etc", "/", "/proc/self", "a" * 300, "é∂\u202e", "null",
                "items_nope", " ", "\\", "%s%n", "{}"]


def scalar(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randint(-5, 700)
    if kind == 1:
        return rng.choice(SPECIAL_INTS)
    if kind == 2:
        return rng.choice(SPECIAL_FLOATS)
    if kind == 3:
        return rng.choice(SPECIAL_STRS)
    if kind == 4:
        return "".join(chr(rng.randint(1, 0x2FF)) for _ in range(rng.randint(0, 12)))
    return rng.choice([True, False, None])


def value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.6:
        return scalar(rng)
    if r < 0.85:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(["top_k", "hist_item", "collection", "export_dir", "x"]): value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def history(rng: random.Random) -> list[Any]:
    h: list[Any] = [rng.randint(1, 620) for _ in range(rng.randint(0, 32))]
    if h and rng.random() < 0.3:
        h[rng.randrange(len(h))] = scalar(rng)
    return h


def mutate(rng: random.Random, body: dict[str, Any]) -> Any:
    """0-3 structural mutations of a valid body (or a random value in its place)."""
    if rng.random() < 0.08:
        return value(rng)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        key = rng.choice([*body.keys(), "extra"]) if body else "extra"
        op = rng.randrange(4)
        if op == 0:
            body[key] = value(rng)
        elif op == 1:
            body.pop(key, None)
        elif op == 2 and isinstance(body.get(key), list):
            body[key].append(value(rng) if rng.random() < 0.5 else history(rng))
        else:
            body[key] = [body.get(key)]
    return body


def encode(rng: random.Random, body: Any) -> bytes:
    raw = json.dumps(body, allow_nan=True).encode()
    r = rng.random()
    if r < 0.85 or not raw:
        return raw
    b = bytearray(raw)
    if r < 0.9:
        return bytes(b[: rng.randrange(len(b))])  # truncated
    if r < 0.95:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if r < 0.98:
        return raw * rng.randint(2, 3)
    return b'{"top_k": 5, "pad": "' + b"x" * 30_000 + b'"}'  # over http.max_body_bytes


class Fuzzer:
    """One request per call for an endpoint: a valid body with mutations, random auth and content type."""

    def __init__(self, rng: random.Random, export: Path, broken: list[Path], alias: str) -> None:
        self.rng, self.export, self.broken, self.alias = rng, export, broken, alias
        self.collection = ""  # the served collection, once known

    def headers(self) -> dict[str, str | bytes]:
        rng = self.rng
        h: dict[str, str | bytes] = {}
        r = rng.random()
        if r < 0.9:
            h["Authorization"] = f"Bearer {TOKEN}"
        elif r < 0.95:
            h["Authorization"] = rng.choice(["", "Bearer", f"Basic {TOKEN}", "Bearer wrong", f"bearer  {TOKEN} ",
                                             "Bearer \xe9".encode("latin-1")])
        r = rng.random()
        if r < 0.9:
            h["Content-Type"] = "application/json"
        elif r < 0.95:
            h["Content-Type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                            "application/json; charset=latin-1"])
        return h

    def drops_served(self, content: bytes | None) -> bool:
        """Would this body drop the served collection (none, no name, the alias, or its name)?"""
        if content is None or not content.strip():  # no body: the default, the served collection
            return True
        try:
            body = json.loads(content)
        except ValueError:
            return False
        if body is None:
            return True
        return isinstance(body, dict) and body.get("collection") in (None, "", self.alias, self.collection)

    def request(self, endpoint: str, serving: bool) -> tuple[str, str, bytes | None, dict[str, str | bytes]]:
        rng = self.rng
        if endpoint in ("/healthz", "/metrics"):
            method = "GET" if rng.random() < 0.9 else rng.choice(["POST", "PUT", "DELETE"])
            query = "" if rng.random() < 0.7 else "?" + rng.choice(["a=1", "x=%00", "&&=", "q=" + "z" * 500])
            return method, endpoint + query, None, self.headers()
        if endpoint == "/rec/recall":
            body: dict[str, Any] = {"top_k": rng.choice([rng.randint(1, 60), 5, 10, 25]),
                                    "hist_item": [history(rng) for _ in range(rng.randint(1, 9))]}
        elif endpoint == "/rec/insert_data":
            choice = rng.random()
            if choice < 0.6:
                d: Any = str(rng.choice(self.broken))
            elif choice < 0.9:
                near = str(self.export) + rng.choice(["x", "/nope", "/..", "/items.npz", "\x00"])
                d = rng.choice([near, scalar(rng)])
            else:
                # the real export: rarely, or to serve again after a drop took the model away
                d = str(self.export) if (not serving or rng.random() < 0.003) else str(self.export) + "-nope"
            body = {"export_dir": d}
        else:  # count, drop, qa/drop
            unknown = rng.choice(["items_nope", "nope"])
            real = rng.choice([self.alias, self.collection, None]) if rng.random() < 0.25 else unknown
            body = {"collection": rng.choice([real, real, scalar(rng)])}
        if endpoint == "/rec/insert_data" and body["export_dir"] == str(self.export):
            return "POST", endpoint, json.dumps(body).encode(), self.headers()  # keep the rare valid ones valid
        content = encode(rng, mutate(rng, body)) if rng.random() < 0.97 or endpoint.endswith("drop") else None
        if endpoint.endswith("drop") and self.drops_served(content) and rng.random() > 0.0005:
            # a real drop now and then only: each needs an insert after
            content = rng.choice([b'{"collection": "items_nope"}', b'{"collection": "nope"}'])
        return "POST", endpoint, content, self.headers()


@pytest.fixture
def broken_exports(tmp_path: Path, export_base: Path) -> list[Path]:
    """Export directories a client may name that exist but cannot be loaded."""
    out = []
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "manifest.json").write_text("{not json")
    out.append(garbage)
    empty_manifest = tmp_path / "empty-manifest"
    empty_manifest.mkdir()
    (empty_manifest / "manifest.json").write_text("{}")
    out.append(empty_manifest)
    manifest_only = tmp_path / "manifest-only"
    manifest_only.mkdir()
    shutil.copy(export_base / "export" / "manifest.json", manifest_only / "manifest.json")
    out.append(manifest_only)
    no_items = tmp_path / "no-items"
    shutil.copytree(export_base / "export", no_items)
    (no_items / "items.npz").unlink()
    out.append(no_items)
    bad_items = tmp_path / "bad-items"
    shutil.copytree(export_base / "export", bad_items)
    (bad_items / "items.npz").write_bytes(b"PK\x03\x04 not a zip")
    out.append(bad_items)
    no_popular = tmp_path / "no-popular"
    shutil.copytree(export_base / "export", no_popular)
    (no_popular / "popular.npy").unlink()
    out.append(no_popular)
    out.append(tmp_path / "nowhere")
    return out


@pytest.mark.timeout(540)
def test_fuzz_every_endpoint_never_500(
    milvus_uri: str, export_base: Path, tmp_path: Path, broken_exports: list[Path]
) -> None:
    s = Settings().replace(
        f"milvus.uri={milvus_uri}",
        f"worker.export_dir={tmp_path / 'none'}",
        f"http.token={TOKEN}",
        "http.max_body_bytes=20000",
        "http.max_histories=8",
        "http.max_recall_work=3000",
        "worker.max_hist=30",
        "worker.max_top_k=60",
    )
    store = ItemStore(s.milvus)
    service = make_service(s, store=store, metrics=Metrics())
    app = create_app(s, service)
    export = export_base / "export"
    rng = random.Random(SEED)
    fuzz = Fuzzer(rng, export, broken_exports, s.milvus.alias)
    plan = [e for e in ENDPOINTS for _ in range(PER_ENDPOINT)]
    rng.shuffle(plan)
    codes: dict[str, collections.Counter[int]] = {e: collections.Counter() for e in ENDPOINTS}
    bad: list[str] = []
    spent: collections.Counter[str] = collections.Counter()

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            r = await client.post("/rec/insert_data", json={"export_dir": str(export)}, headers=headers)
            assert r.status_code == 200, r.text
            fuzz.collection = r.json()["collection"]
            for endpoint in plan:
                method, url, content, hdrs = fuzz.request(endpoint, service.engine is not None)
                t1 = time.perf_counter()
                r = await client.request(method, url, content=content, headers=hdrs)
                spent[f"{endpoint} {r.status_code}"] += time.perf_counter() - t1
                codes[endpoint][r.status_code] += 1
                ok = 200 <= r.status_code < 300 or 400 <= r.status_code < 500 or r.status_code == 503
                if ok and r.status_code >= 400:
                    try:
                        ok = bool(r.json()["detail"])
                    except (ValueError, KeyError, TypeError):
                        ok = False
                if not ok and len(bad) < 10:
                    bad.append(f"{method} {url} {content[:300] if content else content!r} {hdrs} -> "
                               f"{r.status_code} {r.text[:300]}")
            # afterwards the service still answers a valid recall (after an insert if a drop took it away)
            r = await client.post("/rec/insert_data", json={"export_dir": str(export)}, headers=headers)
            assert r.status_code == 200 and r.json()["rows"] == 600, r.text
            r = await client.post("/rec/recall", json={"top_k": 10, "hist_item": [[3, 4, 5]]}, headers=headers)
            assert r.status_code == 200 and len(r.json()["results"][0]["items"]) == 10, r.text

    t0 = time.monotonic()
    try:
        asyncio.run(run())
    finally:
        store.close()
    took = time.monotonic() - t0
    summary = {e: dict(sorted(c.items())) for e, c in codes.items()}
    print(f"fuzz: {len(plan)} requests in {took:.1f}s: {summary}")
    print({k: round(v, 1) for k, v in spent.most_common(12)})
    assert not bad, "\n".join(bad)
    assert all(sum(c.values()) == PER_ENDPOINT for c in codes.values())
    assert not any(code >= 500 and code != 503 for c in codes.values() for code in c)
    # the fuzz reached every kind of answer, not only one refusal
    assert {200, 401, 413, 422} <= set(codes["/rec/recall"]), summary
    assert {200, 401, 404, 422} <= set(codes["/rec/insert_data"]), summary
    assert {200, 401, 422} <= set(codes["/rec/count"]), summary
    assert {200, 401, 404, 422} <= set(codes["/rec/drop"]) | set(codes["/qa/drop"]), summary
    assert {200, 405} <= set(codes["/healthz"]) and {200, 405} <= set(codes["/metrics"]), summary
