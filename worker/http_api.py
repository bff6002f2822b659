"""HTTP API over the same recall engine (FastAPI; ``mind-recall serve``).

Endpoints keep the original service's names: POST /rec/insert_data, /rec/recall, /rec/count,
/rec/drop (+ /qa/drop), plus GET /healthz, /metrics and the OpenAPI UI at /docs. With http.token
set, every /rec and /qa call needs ``Authorization: Bearer <token>`` (compared in constant time);
/healthz, /metrics and /docs stay open for probes and scrapers. Bodies over http.max_body_bytes and
recalls whose search (vectors x hits) is over http.max_recall_work get 413; list sizes and top_k outside their
limits get 422; Milvus down or slow gets 503 / 504. Every error answer is JSON with a ``detail``; a
500 means a bug (the last-resort handler logs it).
"""

from __future__ import annotations

import hmac
import logging
import math
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictInt

from mind_recall.settings import Settings
from mind_recall.wire import check_history
from worker.recall import (
    Query,
    RecallEngine,
    SearchDeadline,
    chunked_search,
    load_export_items,
    load_into_store,
    load_popular,
)
from worker.store import StoreError

log = logging.getLogger(__name__)
OPEN_CACHE_S = 0.5  # /healthz's Milvus check and /metrics' rendering are reused this long (open endpoints)


class InsertBody(BaseModel):
    export_dir: str | None = Field(None, description="export directory (default: worker.export_dir)")


class RecallBody(BaseModel):
    top_k: StrictInt = Field(50, description="items per history, 1..worker.max_top_k")
    hist_item: list[list[StrictInt]] = Field(..., description="one or more histories of item ids, oldest first")


class CollectionBody(BaseModel):
    collection: str | None = Field(None, description="default: the collection being served")


class BadExport(ValueError):
    """The export directory named by a client exists but cannot be loaded (a 422, not a 500)."""


class RecallService:
    """The store plus a swappable engine (an insert of another export switches the served version).

    State rules (docs/recall.md "Drop and insert"): ``engine`` is None until an export is served and
    again after its collection is dropped; ``/rec/insert_data`` then restores the export's rows and
    serves it again."""

    def __init__(self, settings: Settings, store: Any, metrics: Any = None, items: Any = None) -> None:
        self.s, self.store, self.metrics = settings, store, metrics
        self.live_items = items  # the worker's live ItemCache when it runs in this process
        self.engine: RecallEngine | None = None
        self.collection: str | None = None
        self.dropped: str | None = None  # the served collection, after a drop took it away
        self.lock = threading.Lock()  # the tower predictor and the Lite client are not shared across threads
        self.deadline: float | None = None  # monotonic end of the recall in progress (set under the lock)

    def load_export(self, export_dir: str | Path, *, insert: bool) -> dict[str, Any]:
        from model.tower import UserTower

        try:
            export_dir = Path(export_dir)
            found = (export_dir / "manifest.json").is_file()
        except (ValueError, OSError) as e:  # a NUL byte, a name too long: no export there either
            raise FileNotFoundError(f"no export at {str(export_dir)[:200]!r} ({e})") from None
        if not found:
            raise FileNotFoundError(f"no export at {str(export_dir)[:200]} (manifest.json missing)")
        try:  # the cheap files first: a broken export fails before the tower is built
            load_popular(export_dir)  # checked here: the engine (worker/engines.py) reads it again
            items: Any = load_export_items(export_dir)
            tower = UserTower.load(export_dir, use_gpu=self.s.runner.use_gpu)
            if getattr(self.live_items, "model_version", None) == tower.model_version:
                items = self.live_items  # the worker's live cache of this version: deletes streamed since count
        except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile) as e:
            # a broken or partial export (files missing, truncated, of another shape): the client named it
            raise BadExport(f"export at {str(export_dir)[:200]} cannot be loaded: {type(e).__name__}: {e}"[:500]) from e
        with self.lock:
            coll = self.store.collection_name(tower.model_version)
            info: dict[str, Any] = {"collection": coll, "model_version": tower.model_version, "rows": None}
            if insert:
                coll, written = load_into_store(self.store, export_dir, restore=True)
                info.update(collection=coll, rows=self.store.count(coll), inserted=written)
            self.engine = self.engine_for(export_dir, items, tower=tower)
            self.collection, self.dropped = coll, None
        if self.metrics is not None:
            self.metrics.model_info.info({"model_version": tower.model_version})
        return info

    def engine_for(self, export_dir: str | Path, items: Any, tower: Any = None) -> RecallEngine:
        """An engine of this export for the HTTP path (its own tower: a predictor is not shared across
        threads; searches chunked under the request's deadline), built by the one factory."""
        from worker.engines import engine_for_export

        return engine_for_export(
            self.s, export_dir, store=self.store, items=items, tower=tower, metrics=self.metrics,
            wrap_search=lambda search: chunked_search(search, self.s.milvus.search_chunk, lambda: self.deadline),
        )

    def use(self, engine: RecallEngine, collection: str, items: Any) -> None:
        """Serve ``engine`` from the next request on (a hot rollout, worker/app.py)."""
        with self.lock:
            self.engine, self.collection, self.live_items, self.dropped = engine, collection, items, None


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


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": {"detail": "why"}}}}


# Error answers per route, for the OpenAPI schema (every one is JSON with a "detail").
Responses = dict[int | str, dict[str, Any]]
_AUTH: Responses = {401: _err("missing or wrong bearer token (http.token set)")}
_ADMIN: Responses = {**_AUTH, 403: _err("admin endpoint without http.token while the API is not bound to loopback")}
_BODY: Responses = {413: _err("body over http.max_body_bytes")}
_MILVUS: Responses = {503: _err("Milvus unavailable, or another call held the service past milvus.timeout_s")}
_RECALL_RESPONSES: Responses = {
    **_AUTH,
    413: _err("body over http.max_body_bytes, or the search (vectors x hits) over http.max_recall_work"),
    503: _err("no model served (POST /rec/insert_data first), Milvus unavailable, or the service busy"),
    504: _err("the searches ran past milvus.timeout_s"),
}
_INSERT_RESPONSES: Responses = {
    **_ADMIN, **_BODY, **_MILVUS, 404: _err("no export at export_dir"),
    422: _err("bad body, or an export that cannot be loaded"),
}
_COUNT_RESPONSES: Responses = {**_AUTH, **_BODY, **_MILVUS}
_DROP_RESPONSES: Responses = {
    **_ADMIN, **_BODY, **_MILVUS, 404: _err("no such collection (or alias), or none given and none served"),
}
_HEALTH_RESPONSES: Responses = {
    503: _err("not serving: no model loaded, its collection dropped or missing, or Milvus unavailable"),
}


def _json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot carry (NaN, Infinity, bytes, objects) as strings: a 422 that
    echoed ``{"top_k": NaN}`` failed to serialise and became a 500."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _validation_detail(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 detail without the ``input`` echo (it can be the whole 4 MB body, or NaN): the
    location, message and type say what is wrong. At most 20 errors."""
    return [
        {k: _json_safe(e.get(k)) for k in ("loc", "msg", "type") if k in e}
        for e in list(errors)[:20]
    ]


def create_app(settings: Settings, service: RecallService) -> FastAPI:
    app = FastAPI(title="mind-recall", description="MIND multi-interest recall over Milvus", version="1")
    w, h = settings.worker, settings.http
    token = h.token.encode()
    timeout_s = settings.milvus.timeout_s

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(StoreError)
    async def milvus_down(_: Request, exc: StoreError) -> JSONResponse:
        log.warning("HTTP API: %s", exc)
        return JSONResponse({"detail": f"milvus unavailable: {exc}"[:500]}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(SearchDeadline)
    async def too_slow(_: Request, exc: SearchDeadline) -> JSONResponse:
        return JSONResponse({"detail": f"recall ran past milvus.timeout_s={timeout_s}: {exc}"}, status_code=504)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        """Last resort: only a bug gets here (each known failure has its own answer above)."""
        log.error("HTTP API: unexpected %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

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

    @contextmanager
    def locked() -> Iterator[None]:
        """The service lock, waited for at most milvus.timeout_s: a queue of callers behind a slow one
        gets a prompt 503 instead of hanging."""
        if not service.lock.acquire(timeout=timeout_s):
            raise HTTPException(503, f"busy: another call held the service for over {timeout_s}s",
                                headers={"Retry-After": "1"})
        try:
            yield
        finally:
            service.lock.release()

    checked: dict[str, Any] = {"at": -1.0, "coll": None, "problem": None}  # the last Milvus check of /healthz

    @app.post("/rec/insert_data", dependencies=[Depends(admin)], responses=_INSERT_RESPONSES)
    def insert_data(body: InsertBody | None = None) -> dict[str, Any]:
        """Make Milvus hold the export's item vectors (its model version's collection: every export id
        the collection lacks is written, rows present are kept; alias switched) and serve that export's
        user tower. ``rows`` is the collection's count afterwards, ``inserted`` the rows written."""
        export_dir = (body.export_dir if body else None) or w.export_dir
        checked["at"] = -1.0  # /healthz asks Milvus again
        try:
            return service.load_export(export_dir, insert=True)
        except FileNotFoundError as e:
            raise HTTPException(404, str(e)) from None
        except BadExport as e:
            raise HTTPException(422, str(e)) from None

    @app.post("/rec/recall", dependencies=[Depends(auth)], responses=_RECALL_RESPONSES)
    def recall(body: RecallBody) -> dict[str, Any]:
        """One ranked item list per history (MIND interests, searched in milvus.search_chunk calls)."""
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
        with locked():
            engine = service.engine
            if engine is None:
                raise HTTPException(503, "no model served: POST /rec/insert_data first")
            n_vectors, hits = engine.search_size(queries)
            if n_vectors * hits > h.max_recall_work:
                raise HTTPException(
                    413,
                    f"this recall would search {len(queries)} histories x {engine.tower.k} interests = {n_vectors}"
                    f" vectors x {hits} hits (top_k + seen/4 + 2) = {n_vectors * hits} > http.max_recall_work="
                    f"{h.max_recall_work}: send fewer histories per call, or a smaller top_k",
                )
            service.deadline = time.monotonic() + timeout_s
            try:
                results = engine.recall(queries)
            finally:
                service.deadline = None
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

    @app.post("/rec/count", dependencies=[Depends(auth)], responses=_COUNT_RESPONSES)
    def count(body: CollectionBody | None = None) -> dict[str, Any]:
        """Rows in a collection or the alias (default: the one being served, else the alias);
        ``collection`` is the collection counted, ``alias`` the name asked for when it was the alias."""
        name = (body.collection if body else None) or service.collection or settings.milvus.alias
        with locked():
            coll = service.store.resolve(name)
            if coll is None:
                return {"collection": name, "count": 0, "exists": False}
            out = {"collection": coll, "count": service.store.count(coll), "exists": True}
        if coll != name:
            out["alias"] = name
        return out

    def _drop(body: CollectionBody | None) -> dict[str, Any]:
        name = (body.collection if body else None) or service.collection
        if name is None:
            raise HTTPException(404, "no collection given and none being served")
        with locked():
            coll = service.store.resolve(name)
            if coll is None:
                raise HTTPException(404, f"no collection {name}")
            service.store.drop(coll, force=True)  # the live one too: its alias goes with it
            checked["at"] = -1.0
            if coll == service.collection:
                # nothing left to search: recall and /healthz answer 503 until the next insert
                service.engine, service.dropped = None, coll
        return {"dropped": coll}

    @app.post("/rec/drop", dependencies=[Depends(admin)], responses=_DROP_RESPONSES)
    def drop(body: CollectionBody | None = None) -> dict[str, Any]:
        """Drop a collection, or the one the alias names (default: the one being served). Dropping the
        served one stops recall (503) on this API until the next /rec/insert_data."""
        return _drop(body)

    @app.post("/qa/drop", dependencies=[Depends(admin)], responses=_DROP_RESPONSES)
    def qa_drop(body: CollectionBody | None = None) -> dict[str, Any]:
        """The original service's name for /rec/drop (same semantics)."""
        return _drop(body)

    def milvus_problem(coll: str) -> tuple[str, str] | None:
        """(status, detail) when ``coll`` is not searchable; asked of Milvus at most every OPEN_CACHE_S
        (/healthz is open to anyone: a flood of probes must not become a flood of Milvus calls)."""
        now = time.monotonic()
        if checked["coll"] != coll or now - checked["at"] > OPEN_CACHE_S:
            try:
                present = coll in service.store.list_collections()
                problem = None if present else ("collection_missing", f"collection {coll} is gone")
            except StoreError as err:
                problem = ("milvus_unavailable", str(err)[:500])
            checked.update(at=now, coll=coll, problem=problem)
        return checked["problem"]  # type: ignore[no-any-return]

    @app.get("/healthz", responses=_HEALTH_RESPONSES)
    def healthz() -> JSONResponse:
        """200 only while a model is served and its collection exists in a reachable Milvus."""
        e, coll = service.engine, service.collection
        body: dict[str, Any] = {"status": "ok", "model_version": e.model_version if e else None, "collection": coll}
        if e is None or coll is None:
            why = (f"collection {service.dropped} was dropped: POST /rec/insert_data" if service.dropped
                   else "no model loaded: POST /rec/insert_data")
            return JSONResponse({**body, "status": "not_serving", "detail": why}, status_code=503)
        problem = milvus_problem(coll)
        if problem is not None:
            return JSONResponse({**body, "status": problem[0], "detail": problem[1]}, status_code=503)
        return JSONResponse(body)

    exposition: dict[str, Any] = {"at": -1.0, "body": b""}

    @app.get("/metrics")
    def metrics() -> Response:
        """The registry in Prometheus text format, rendered at most every OPEN_CACHE_S: a render costs
        ~4 ms of CPU under the GIL the Kafka path shares, and the endpoint is open to anyone."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if service.metrics is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        now = time.monotonic()
        if now - exposition["at"] > OPEN_CACHE_S:
            exposition.update(at=now, body=generate_latest(service.metrics.registry))
        return Response(exposition["body"], media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_BodyLimit, limit=h.max_body_bytes)
    # added last: the outermost. The label is the app's own route paths, any other path "other" (bounded).
    app.add_middleware(_Timed, service=service, routes=frozenset(getattr(r, "path", "") for r in app.routes))
    return app


class PortInUse(OSError):
    """The HTTP API cannot listen on http.host:http.port (one line for the CLI, no traceback)."""


def bind_http(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` for uvicorn (``Server.run(sockets=[...])``), bound in the caller's
    thread so that a port in use fails at once with :class:`PortInUse` naming http.host / http.port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise PortInUse(f"HTTP API cannot listen on {host}:{port} (http.host / http.port): {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


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
