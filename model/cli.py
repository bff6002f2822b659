"""``mind-recall train | evaluate | export``: thin handlers over model.trainer / infer / export.
Paddle is imported inside the handlers so other commands stay fast."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mind_recall.cliargs import add_config_args
from mind_recall.settings import Settings


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from model.trainer import train

    try:
        out = train(settings, resume=True if args.resume else None)
    except (FileNotFoundError, ValueError) as e:
        print(f"mind-recall train: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from model.infer import run_evaluate

    try:
        run_evaluate(
            settings, args.top_n, epoch=args.epoch, baseline=args.baseline, index=args.index,
            json_out=args.json_out, exclude_seen=args.exclude_seen,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"mind-recall evaluate: {e}", file=sys.stderr)
        return 2
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from model.export import export_checkpoint

    out = args.out or settings.worker.export_dir
    try:
        manifest = export_checkpoint(settings, out, epoch=args.epoch)
    except (FileNotFoundError, RuntimeError, ValueError) as e:  # RuntimeError: tower.ExportError
        print(f"mind-recall export: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), **manifest}, indent=1))
    return 0


def add_commands(sub: Any) -> None:
    from model.infer import add_eval_args

    p = sub.add_parser("train", help="train MIND / the single-vector baseline (checkpoint per epoch)")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue after the latest checkpoint")
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", help="Recall/NDCG/HitRate@N of a checkpoint or a baseline")
    add_config_args(p)
    add_eval_args(p)
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("export", help="export the user tower + item vectors for serving")
    add_config_args(p)
    p.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the latest)")
    p.add_argument("--out", default=None, help="export directory (default: worker.export_dir)")
    p.set_defaults(handler=_export)
