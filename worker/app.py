"""The roles of one worker process, run as threads that share one Milvus client and one metrics registry.

Milvus Lite (the embedded default) is file-locked to one process, so on it the item writer, the recall
worker and the HTTP API must live in one process. With a Milvus server each role can run alone
(``mind-recall worker --roles recall``) and scale out; the code path is the same.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mind_recall.settings import Settings
from worker import metrics as metrics_mod
from worker.outage import EXIT_OUTAGE, OutageError

log = logging.getLogger(__name__)

ROLES = ("items", "recall", "http")


@dataclass
class _Prepared:
    """One model version, ready to serve (App._prepare_model)."""

    model_version: str
    collection: str
    engine: Any  # the recall worker's (None without that role)
    http_engine: Any  # the HTTP API's own (its tower is not shared across threads)
    items: Any
    follower: Any


@dataclass
class App:
    """Start the chosen roles, report their endpoints, stop them in order."""

    settings: Settings
    roles: tuple[str, ...] = ROLES
    export_dir: str | None = None
    load_items: bool = False  # upsert the export's vectors into Milvus at start (demos, a fresh Lite file)
    per_request: bool = False  # benchmark baseline: one forward and K searches per request
    metrics: metrics_mod.Metrics | None = None
    metrics_port: int | None = None
    http_port: int | None = None
    errors: list[str] = field(default_factory=list)
    exit_code: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)
    _stoppers: list[Callable[[], None]] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)
    # background threads with .fatal and .stop(): item followers, the model watcher. One that stops fatally
    # stops the App: a cache that no longer follows deletes, or a watcher that no longer sees rollouts.
    _followers: list[Any] = field(default_factory=list)
    recall_worker: Any = None
    items: Any = None  # the live item cache, shared with the HTTP API when both roles run here
    item_writer: Any = None
    store: Any = None
    http_service: Any = None
    watcher: Any = None

    def start(self, ready_timeout_s: float = 60.0) -> App:
        from worker.store import ItemStore

        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown worker roles {sorted(unknown)}; choose from {', '.join(ROLES)}")
        s = self.settings
        self.metrics = self.metrics or metrics_mod.from_settings(s)
        self.metrics_port = metrics_mod.serve(self.metrics, s)
        self.store = ItemStore(s.milvus, self.metrics)
        export_dir = self.export_dir or s.worker.export_dir
        if "items" in self.roles:
            from worker.item_writer import ItemWriter

            self.item_writer = ItemWriter(s, self.metrics, store=self.store)
            self._spawn("item-writer", self.item_writer.run)
            self._stoppers.append(self.item_writer.stop)
        if "recall" in self.roles:
            from worker.recall_worker import RecallWorker, build_engine

            engine, _, follower = build_engine(
                s, export_dir, store=self.store, metrics=self.metrics, load_items=self.load_items,
                per_request=self.per_request,
            )
            if follower is not None:
                self._followers.append(follower)
            self.items = engine.items
            self.recall_worker = RecallWorker(s, engine, self.metrics)
            self._spawn("recall-worker", self.recall_worker.run)
            self._stoppers.append(self.recall_worker.stop)
        if "http" in self.roles:
            self._start_http(export_dir)
        if s.worker.follow_rollouts and (self.recall_worker is not None or self.http_service is not None):
            from worker.model_watch import ModelWatcher

            self.watcher = ModelWatcher(s, self.served_version, self._prepare_model, self._switch_model, self.metrics)
            self._followers.append(self.watcher.start())
        if self.recall_worker is not None and not self.recall_worker.ready.wait(ready_timeout_s):
            self.stop()
            raise TimeoutError(f"recall worker not ready (no partitions assigned) after {ready_timeout_s}s")
        # Everything loaded so far (Paddle, pymilvus, the clients, the histories restored) lives as long as
        # the process: move it out of the collector's reach, so full collections skip it (docs/design.md).
        gc.collect()
        gc.freeze()
        return self

    def _start_http(self, export_dir: str) -> None:
        import uvicorn

        from worker.http_api import bind_http, create_app, make_service

        # Bound first, here, not by uvicorn in its thread: a port in use is one clear error at once (uvicorn
        # logged it, ended its thread, and start() waited 30 s for a server that never came, then a traceback)
        sock = bind_http(self.settings.http.host, self.settings.http.port)
        if self.items is None and (Path(export_dir) / "manifest.json").is_file():
            # HTTP alone: still follow the item topic, so deleted items are never served here either
            from worker.items import start_item_cache

            self.items, follower = start_item_cache(self.settings, export_dir, self.metrics)
            self._followers.append(follower)

        service = make_service(
            self.settings, store=self.store, metrics=self.metrics, export_dir=export_dir, items=self.items,
            load_items=self.load_items and "recall" not in self.roles,
        )
        self.http_service = service
        app = create_app(self.settings, service)
        server = uvicorn.Server(
            uvicorn.Config(app, host=self.settings.http.host, port=self.settings.http.port, log_level="warning")
        )
        self._spawn("http", lambda: server.run(sockets=[sock]))
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError("HTTP API did not start")
        self.http_port = int(server.servers[0].sockets[0].getsockname()[1])
        self._stoppers.append(lambda: setattr(server, "should_exit", True))
        log.info("HTTP API on http://%s:%d (docs at /docs)", self.settings.http.host, self.http_port)

    # -- hot rollout (worker/model_watch.py) -------------------------------------------------------------
    def served_version(self) -> str:
        if self.recall_worker is not None:
            return str(self.recall_worker.engine.model_version)
        engine = self.http_service.engine if self.http_service is not None else None
        return str(engine.model_version) if engine is not None else ""

    def _prepare_model(self, ann: Any) -> _Prepared:
        """Everything the announced version needs to serve, loaded and checked while the old one serves;
        raises (the old version goes on serving) if any of it is not there."""
        from model.tower import UserTower
        from worker.engines import engine_for_export
        from worker.items import start_item_cache
        from worker.model_watch import NotServable

        s, export = self.settings, Path(ann.export_dir)
        deadline = time.monotonic() + s.worker.rollout_ready_timeout_s
        if not (export / "manifest.json").is_file():
            raise FileNotFoundError(f"no export at {export} (manifest.json missing)")
        tower = UserTower.load(str(export), use_gpu=s.runner.use_gpu)
        if tower.model_version != ann.model_version:
            raise ValueError(f"{export} holds model {tower.model_version}, the announcement says {ann.model_version}")
        coll = self.store.collection_name(ann.model_version)
        while coll not in self.store.list_collections() or self.store.count(coll) < ann.rows:
            if time.monotonic() > deadline:
                raise NotServable(f"collection {coll} does not hold the announced {ann.rows} rows after "
                                   f"worker.rollout_ready_timeout_s={s.worker.rollout_ready_timeout_s:g}")
            time.sleep(0.5)
        items, follower = start_item_cache(s, export, self.metrics, wait_s=max(1.0, deadline - time.monotonic()))
        try:
            if not follower.caught_up.is_set():
                raise NotServable(f"the item cache of {ann.model_version} did not catch up with the item topic")
            engine = http_engine = None
            if self.recall_worker is not None:
                engine = engine_for_export(s, export, store=self.store, items=items, tower=tower,
                                           metrics=self.metrics, per_request=self.per_request)
                engine.warm_up()  # a real search on the new collection: it answers before anything switches
            if self.http_service is not None:
                http_engine = self.http_service.engine_for(export, items)
                if engine is None:
                    http_engine.warm_up()
        except BaseException:
            follower.stop()
            raise
        return _Prepared(ann.model_version, coll, engine, http_engine, items, follower)

    def _switch_model(self, p: _Prepared) -> None:
        """Swap the prepared version in: each role takes it from its next batch / request."""
        old = [f for f in self._followers if f is not self.watcher]
        if self.recall_worker is not None and p.engine is not None:
            self.recall_worker.swap_engine(p.engine)
        if self.http_service is not None and p.http_engine is not None:
            self.http_service.use(p.http_engine, p.collection, p.items)
        self.items = p.items
        self._followers.append(p.follower)
        for f in old:  # the old version's cache: batches still in flight keep reading it, nothing updates it
            self._followers.remove(f)
            f.stop()

    def _spawn(self, name: str, target: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                code = target()
                if isinstance(code, int) and code != 0:
                    self._fail(f"{name} exited with code {code}", code)
            except OutageError as e:  # past worker.outage_limit_s: exit for the orchestrator, nothing lost
                self._fail(f"{name}: {e}", EXIT_OUTAGE)
            except Exception as e:  # a role that dies must be visible, not silent
                log.exception("%s failed", name)
                self._fail(f"{name}: {type(e).__name__}: {e}", 1)

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _fail(self, message: str, code: int) -> None:
        log.error("%s", message)
        self.errors.append(message)
        self.exit_code = self.exit_code or code

    def alive(self) -> bool:
        for f in list(self._followers):  # a copy: a rollout may change the list meanwhile
            if f.fatal is not None:  # the live item cache stopped following: serving on would serve stale items
                self._followers.remove(f)
                code = EXIT_OUTAGE if isinstance(f.fatal, OutageError) else 1
                self._fail(f"{type(f).__name__}: {type(f.fatal).__name__}: {f.fatal}", code)
                return False
        return all(t.is_alive() for t in self._threads) and not self.errors

    def wait(self, max_seconds: float | None = None) -> None:
        """Block until a role stops (a crash, or stop() from a signal) or ``max_seconds`` pass."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while self.alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)

    def stop_roles(self) -> None:
        """Ask every role to finish its current batch and return (safe from a signal handler)."""
        for stop in self._stoppers:
            stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_roles()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for f in list(self._followers):
            f.stop()
        for close in self._closers:
            close()
        if self.store is not None:
            self.store.close()
