"""``mind-recall items ...``: the item writer, model rollouts and collection housekeeping."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from mind_recall.cliargs import add_config_args
from mind_recall.settings import Settings

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    items = sub.add_parser("items", help="item vectors: writer, rollout, drop, status")
    isub = items.add_subparsers(dest="items_command", metavar="ACTION")
    isub.required = True

    w = isub.add_parser("write", help="run the item writer ([item-embeddings] -> Milvus; a consumer group)")
    add_config_args(w)
    w.add_argument("--idle-exit-s", type=float, default=None, help="exit 0 after this long without records")
    w.set_defaults(handler=_write)

    r = isub.add_parser(
        "rollout", help="fill a model version's collection from an export and switch the alias"
    )
    add_config_args(r)
    r.add_argument(
        "--model-version", default=None, help="must match the export's manifest (default: its version)"
    )
    r.add_argument("--export", default=None, metavar="DIR", help="export dir (default: worker.export_dir)")
    r.add_argument("--refill", action="store_true",
                   help="overwrite a collection that already has rows (reverts streamed updates and deletes)")
    r.add_argument("--no-announce", action="store_true",
                   help="switch the alias only: running workers keep their model until restarted")
    r.add_argument("--gc", action="store_true",
                   help="instead of a rollout: drop the collections of retired versions once the live one has "
                        "been live for --grace-s")
    r.add_argument("--grace-s", type=float, default=600.0, help="with --gc (default 600)")
    r.set_defaults(handler=_rollout)

    d = isub.add_parser("drop", help="drop a model version's collection (never the live one)")
    add_config_args(d)
    d.add_argument("--model-version", required=True)
    d.set_defaults(handler=_drop)

    st = isub.add_parser("status", help="live collection and every item collection with its row count (JSON)")
    add_config_args(st)
    st.set_defaults(handler=_status)


def _write(settings: Settings, args: argparse.Namespace) -> int:
    from worker.item_writer import run_writer
    from worker.metrics import serve

    return run_writer(settings, idle_exit_s=args.idle_exit_s, serve_metrics=serve)


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from worker.store import ItemStore

    return ItemStore(settings.milvus)


def _rollout(settings: Settings, args: argparse.Namespace) -> int:
    from worker.kafka_io import KafkaError
    from worker.rollout import RolloutError, announce_live, gc, rollout
    from worker.store import StoreError

    store = _store(settings)
    try:
        if args.gc:
            print(json.dumps(gc(settings, store, args.grace_s)))
            return 0
        export = args.export or settings.worker.export_dir
        live = rollout(store, export, args.model_version, progress=settings.runner.progress, refill=args.refill)
        out: dict[str, Any] = {"live": live._asdict(), "alias": settings.milvus.alias}
        if not args.no_announce:  # every worker switches to it (worker/model_watch.py)
            out["announced"] = json.loads(announce_live(settings, store, live, export).encode())
        print(json.dumps(out))
        return 0
    except (RolloutError, StoreError, FileNotFoundError, ValueError, KafkaError) as e:
        print(f"mind-recall items rollout: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _drop(settings: Settings, args: argparse.Namespace) -> int:
    from worker.rollout import drop_version
    from worker.store import StoreError

    store = _store(settings)
    try:
        print(json.dumps({"dropped": drop_version(store, args.model_version)}))
        return 0
    except StoreError as e:
        print(f"mind-recall items drop: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from worker.store import StoreError

    store = _store(settings)
    try:
        live = store.live()
        cols = [
            {**info._asdict(), "rows": store.count(info.collection)} for info in store.versions().values()
        ]
        print(
            json.dumps(
                {
                    "alias": settings.milvus.alias,
                    "live": live._asdict() if live else None,
                    "collections": cols,
                },
                indent=2,
            )
        )
        return 0
    except StoreError as e:
        print(f"mind-recall items status: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
