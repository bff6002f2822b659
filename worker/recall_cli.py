"""``mind-recall worker`` (the streaming recall worker) and ``mind-recall serve`` (the HTTP API)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from mind_recall.cliargs import add_config_args
from mind_recall.settings import Settings

log = logging.getLogger(__name__)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.app import App

    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if "http" in roles and settings.http.port:
        from worker.http_api import PortInUse, bind_http

        try:  # before anything loads: a port in use is one line and exit 2 at once
            bind_http(settings.http.host, settings.http.port).close()
        except PortInUse as e:
            print(f"mind-recall: {e}", file=sys.stderr)
            return 2
    app = App(settings, roles=roles, export_dir=args.export, load_items=args.load_items,
              per_request=args.per_request)

    def trap() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: app.stop_roles())

    trap()
    try:
        app.start()
    except OSError as e:  # PortInUse: taken between the check above and the bind; stop what started
        from worker.http_api import PortInUse

        if not isinstance(e, PortInUse):
            raise
        app.stop()
        print(f"mind-recall: {e}", file=sys.stderr)
        return 2
    # Importing Paddle (during start) replaces the SIGTERM handler with its own C-level one, which aborts
    # the process ("FatalError: Termination signal") instead of a graceful stop: take it back.
    trap()
    log.info("worker roles %s up (group %s)", ",".join(roles), settings.worker.group_id)
    try:
        app.wait(max_seconds=args.max_seconds)
    finally:
        app.stop()
    return app.exit_code


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    """The HTTP API alone (its own live item cache); ``worker`` runs it beside the other roles."""
    settings = settings.replace("metrics.enabled=false")  # /metrics is served by the API itself
    return _worker(settings, argparse.Namespace(
        roles="http", export=args.export, load_items=args.load_items, per_request=False, max_seconds=None,
    ))


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    w = sub.add_parser(
        "worker",
        help="run the streaming service: item writer, recall worker (clicks + requests -> results), HTTP API",
    )
    add_config_args(w)
    w.add_argument("--roles", default="items,recall,http",
                   help="comma-separated roles to run in this process: items, recall, http (default: all; "
                        "Milvus Lite needs them in one process, a Milvus server lets each scale alone)")
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
