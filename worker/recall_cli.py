"""``mind-recall worker`` (the streaming recall worker) and ``mind-recall serve`` (the HTTP API)."""

from __future__ import annotations

import argparse
import logging
import signal

from mind_recall.settings import Settings

log = logging.getLogger(__name__)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker import metrics as metrics_mod
    from worker.recall_worker import OutageError, RecallWorker, build_engine

    metrics = metrics_mod.from_settings(settings)
    metrics_mod.serve(metrics, settings)
    export_dir = args.export or settings.worker.export_dir
    engine, store, follower = build_engine(settings, export_dir, metrics=metrics, load_items=args.load_items)
    if args.per_request:
        from worker.recall import PerRequestEngine

        engine.__class__ = PerRequestEngine  # same state, the unbatched baseline's recall()
    worker = RecallWorker(settings, engine, metrics)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    log.info(
        "recall worker: group %s, topics %s, model %s",
        settings.worker.group_id,
        worker.topics,
        engine.model_version,
    )
    try:
        worker.run(max_seconds=args.max_seconds)
    except OutageError as e:
        log.error("%s", e)
        return 3
    finally:
        if follower is not None:
            follower.stop()
        store.close()
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from worker import metrics as metrics_mod
    from worker.http_api import create_app, make_service

    metrics = metrics_mod.from_settings(settings)
    service = make_service(settings, metrics=metrics, load_items=args.load_items, export_dir=args.export)
    app = create_app(settings, service)
    log.info("HTTP API on http://%s:%d (docs at /docs)", settings.http.host, settings.http.port)
    uvicorn.run(app, host=settings.http.host, port=settings.http.port, log_level="warning")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from mind_recall.cli import add_config_args

    w = sub.add_parser("worker", help="run the streaming recall worker (clicks + recall requests -> results)")
    add_config_args(w)
    w.add_argument("--export", metavar="DIR", help="export to serve (default: worker.export_dir)")
    w.add_argument(
        "--load-items",
        action="store_true",
        help="upsert the export's item vectors into Milvus first (demos with Milvus Lite)",
    )
    w.add_argument(
        "--per-request",
        action="store_true",
        help="benchmark baseline: one forward and K searches per request (no batching)",
    )
    w.add_argument("--max-seconds", type=float, default=None, help="stop after this long (tests, benchmarks)")
    w.set_defaults(handler=_worker)

    s = sub.add_parser("serve", help="run the HTTP API (FastAPI + uvicorn on http.host:http.port)")
    add_config_args(s)
    s.add_argument("--export", metavar="DIR", help="export to serve (default: worker.export_dir)")
    s.add_argument("--load-items", action="store_true", help="upsert the export's item vectors into Milvus first")
    s.set_defaults(handler=_serve)
