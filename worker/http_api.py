"""HTTP API over the same recall engine (FastAPI; ``mind-recall serve``).

Endpoints keep the original service's names: POST /rec/insert_data, /rec/recall, /rec/count,
/rec/drop (+ /qa/drop), plus GET /healthz, /metrics and the OpenAPI UI at /docs. With http.token
set, every /rec and /qa call needs ``Authorization: Bearer <token>`` (compared in constant time);
/healthz, /metrics and /docs stay open for probes and scrapers. Bodies over http.max_body_bytes
get 413; list sizes and top_k outside their limits get 422.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictInt

from mind_recall.settings import Settings
from worker.recall import (
    Query,
    RecallEngine,
    load_export_items,
    load_into_store,
    load_popular,
    store_search,
)
from worker.requests import check_history

log = logging.getLogger(__name__)


class InsertBody(BaseModel):
    export_dir: str | None = Field(None, description="export directory (default: worker.export_dir)")


class RecallBody(BaseModel):
    top_k: StrictInt = Field(50, description="items per history, 1..worker.max_top_k")
    hist_item: list[list[StrictInt]] = Field(..., description="one or more histories of item ids, oldest first")


class CollectionBody(BaseModel):
    collection: str | None = Field(None, description="default: the collection being served")


class RecallService:
    """The store plus a swappable engine (an insert of another export switches the served version)."""

    def __init__(self, settings: Settings, store: Any, metrics: Any = None, items: Any = None) -> None:
        self.s, self.store, self.metrics = settings, store, metrics
        self.live_items = items  # the worker's live ItemCache when it runs in this process
        self.engine: RecallEngine | None = None
        self.collection: str | None = None
        self.lock = threading.Lock()  # the tower predictor and the Lite client are not shared across threads

    def load_export(self, export_dir: str | Path, *, insert: bool) -> dict[str, Any]:
        from model.tower import UserTower

        export_dir = Path(export_dir)
        if not (export_dir / "manifest.json").is_file():
            raise FileNotFoundError(f"no export at {export_dir} (manifest.json missing)")
        tower = UserTower.load(export_dir, use_gpu=self.s.runner.use_gpu)
        items: Any = self.live_items
        if items is None or getattr(items, "model_version", None) != tower.model_version:
            items = load_export_items(export_dir)  # no live cache of this version here: the export's vectors
        with self.lock:
            coll = self.store.collection_name(tower.model_version)
            rows = None
            if insert:
                coll, rows = load_into_store(self.store, export_dir)
            self.engine = RecallEngine(
                tower,
                store_search(self.store, coll),
                items,
                load_popular(export_dir),
                exclude_seen=self.s.worker.exclude_seen,
                metrics=self.metrics,
                min_topn=self.store.free_topn(),
            )
            self.collection = coll
        if self.metrics is not None:
            self.metrics.model_info.info({"model_version": tower.model_version})
        return {"collection": coll, "model_version": tower.model_version, "rows": rows}


class _BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (declared or streamed) with 413."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.limit:
                        await self._reject(send)
                        return
                except ValueError:
                    pass
        chunks, total, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._reject(send)
                return
            chunks.append(body)
            more = msg.get("more_body", False)
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def receive_again() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()

        await self.app(scope, receive_again, send)

    async def _reject(self, send: Any) -> None:
        resp = JSONResponse({"detail": f"request body over http.max_body_bytes={self.limit}"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


class _Timed:
    """Times every HTTP request into ``http_request_seconds{endpoint, code}`` (outermost, so requests
    refused by the body limit and errors count too). The Kafka path's ``recall_latency_seconds`` stays
    request ts -> result produced: HTTP time is not mixed into it."""

    def __init__(self, app: Any, service: RecallService, routes: frozenset[str]) -> None:
        self.app, self.service, self.routes = app, service, routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        metrics = self.service.metrics
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500  # 500 unless a response starts (an exception escapes)

        async def send_timed(msg: Any) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            path = scope.get("path", "")
            metrics.http_observe(path if path in self.routes else "other", status, time.perf_counter() - t0)


def create_app(settings: Settings, service: RecallService) -> FastAPI:
    app = FastAPI(title="mind-recall", description="MIND multi-interest recall over Milvus", version="1")
    w, h = settings.worker, settings.http
    token = h.token.encode()

    def auth(request: Request) -> None:
        if not token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    loopback = h.host in ("127.0.0.1", "localhost", "::1")

    def admin(request: Request) -> None:
        """Admin endpoints change what is served: without a token they answer only on loopback."""
        auth(request)
        if not token and not loopback:
            raise HTTPException(403, "admin endpoints need http.token when the API is not bound to loopback")

    def engine_or_503() -> RecallEngine:
        if service.engine is None:
            raise HTTPException(503, "no model loaded: POST /rec/insert_data first")
        return service.engine

    @app.post("/rec/insert_data", dependencies=[Depends(admin)])
    def insert_data(body: InsertBody | None = None) -> dict[str, Any]:
        """Load an export's item vectors into Milvus (its model version's collection, alias switched)
        and serve that export's user tower."""
        export_dir = (body.export_dir if body else None) or w.export_dir
        try:
            return service.load_export(export_dir, insert=True)
        except FileNotFoundError as e:
            raise HTTPException(404, str(e)) from None

    @app.post("/rec/recall", dependencies=[Depends(auth)])
    def recall(body: RecallBody) -> dict[str, Any]:
        """One ranked item list per history (MIND interests, one batched search)."""
        if not 1 <= body.top_k <= w.max_top_k:
            raise HTTPException(422, f"top_k must be in [1, {w.max_top_k}]")
        if not 1 <= len(body.hist_item) <= h.max_histories:
            raise HTTPException(422, f"hist_item must hold 1..{h.max_histories} histories")
        queries = []
        for i, hist in enumerate(body.hist_item):
            ids, err = check_history(hist, w.max_hist)
            if err is not None or ids is None:
                raise HTTPException(422, f"hist_item[{i}]: {err}")
            queries.append(Query(i, body.top_k, ids))
        engine = engine_or_503()
        with service.lock:
            results = engine.recall(queries)
        if service.metrics is not None:
            # recall_latency_seconds is the Kafka path's request ts -> result produced; HTTP time is not mixed in
            service.metrics.recall_batch_size.observe(len(queries))
            for r in results:
                service.metrics.recall_requests.labels(outcome="ok" if r.source == "mind" else "cold_start").inc()
        return {
            "model_version": engine.model_version,
            "results": [
                {
                    "source": r.source,
                    "n_interests": r.n_interests,
                    "items": [{"item_id": c.item_id, "score": c.score, "interest": c.interest} for c in r.items],
                }
                for r in results
            ],
        }

    @app.post("/rec/count", dependencies=[Depends(auth)])
    def count(body: CollectionBody | None = None) -> dict[str, Any]:
        """Rows in a collection (default: the one being served, else the alias)."""
        coll = (body.collection if body else None) or service.collection
        with service.lock:
            names = service.store.list_collections()
            if coll is not None and coll not in names:
                return {"collection": coll, "count": 0, "exists": False}
            return {"collection": coll, "count": service.store.count(coll), "exists": True}

    def _drop(body: CollectionBody | None) -> dict[str, Any]:
        coll = (body.collection if body else None) or service.collection
        if coll is None:
            raise HTTPException(404, "no collection given and none being served")
        with service.lock:
            if coll not in service.store.list_collections():
                raise HTTPException(404, f"no collection {coll}")
            service.store.drop(coll, force=True)  # the live one too: its alias goes with it
            if coll == service.collection:
                service.engine = None  # nothing left to search: recall answers 503 until the next insert
        return {"dropped": coll}

    @app.post("/rec/drop", dependencies=[Depends(admin)])
    def drop(body: CollectionBody | None = None) -> dict[str, Any]:
        """Drop a collection (default: the one being served)."""
        return _drop(body)

    @app.post("/qa/drop", dependencies=[Depends(admin)], include_in_schema=False)
    def qa_drop(body: CollectionBody | None = None) -> dict[str, Any]:
        return _drop(body)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        e = service.engine
        return {
            "status": "ok",
            "model_version": e.model_version if e else None,
            "collection": service.collection,
        }

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if service.metrics is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_BodyLimit, limit=h.max_body_bytes)
    # added last: the outermost. The label is the app's own route paths, any other path "other" (bounded).
    app.add_middleware(_Timed, service=service, routes=frozenset(getattr(r, "path", "") for r in app.routes))
    return app


def make_service(
    settings: Settings,
    *,
    store: Any = None,
    metrics: Any = None,
    load_items: bool = False,
    export_dir: str | None = None,
    items: Any = None,
) -> RecallService:
    """The service with the export at ``export_dir`` (default worker.export_dir) loaded if it exists."""
    if store is None:
        from worker.store import ItemStore

        store = ItemStore(settings.milvus, metrics)
    service = RecallService(settings, store, metrics, items=items)
    d = Path(export_dir or settings.worker.export_dir)
    if (d / "manifest.json").is_file():
        info = service.load_export(d, insert=load_items)
        log.info("serving %s", info)
    else:
        log.warning("no export at %s: POST /rec/insert_data with an export_dir to start serving", d)
    return service
