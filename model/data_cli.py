"""``mind-recall data ...``: dataset tools (synthetic AmazonBook-format data, public datasets)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from mind_recall.settings import Settings


def _positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _synth(settings: Settings, args: argparse.Namespace) -> int:
    from model.synth import write_dataset

    overrides: dict[str, Any] = {}
    if args.clusters:
        overrides["clusters"] = args.clusters
    if args.eval_frac is not None:
        overrides["eval_frac"] = args.eval_frac
    t0 = time.perf_counter()
    ds = write_dataset(args.out, args.users, args.items, args.seed, **overrides)
    meta = {k: v for k, v in ds.meta.items() if k != "params"}
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["out"] = str(ds.out_dir)
    print(json.dumps(meta))
    return 0


def _fetch(settings: Settings, args: argparse.Namespace) -> int:
    import sys

    from model.data import DataError
    from model.datasets import convert

    t0 = time.perf_counter()
    try:
        meta = convert(args.name, args.src, args.out, seed=args.seed, valid_frac=args.valid_frac,
                       test_frac=args.test_frac)
    except (FileNotFoundError, DataError, ValueError) as e:
        print(f"mind-recall data fetch: {e}", file=sys.stderr)
        return 2
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["out"] = str(args.out)
    print(json.dumps(meta))
    return 0


def add_commands(sub: Any) -> None:
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    p = data_sub.add_parser(
        "synth",
        help="write a synthetic AmazonBook-format dataset with planted multi-interest structure",
        description="Writes OUT/train/data.txt (uid,item_id,order), OUT/valid/part-0 (ComiRec eval "
        "lines) and OUT/meta.json. Item ids are 1..ITEMS (0 is padding).",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--users", type=_positive, default=20000, help="train + eval users (default 20000)")
    p.add_argument("--items", type=_positive, default=5000, help="items (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--clusters", type=_positive, default=None, help="topics (default items/25)")
    p.add_argument("--eval-frac", type=float, default=None, help="share of eval users (default 0.1)")
    p.set_defaults(handler=_synth)

    p = data_sub.add_parser(
        "fetch",
        help="convert a local copy of a public dataset (ICLRec / SimRec 'uid item item ...' files)",
        description="Reads SRC: one file with one user per line ('uid i1 i2 ...', time order; users are "
        "split 80/10/10 by user with --seed) or a directory with NAME_{train,valid,test}.txt (split kept). "
        "Writes OUT/train/data.txt, OUT/valid/part-0, OUT/test/part-0 (ComiRec eval lines: first 80%% "
        "history, the rest eval items) and OUT/meta.json. Nothing is downloaded.",
    )
    p.add_argument("name", help="dataset name (e.g. Beauty; the file prefix of a pre-split directory)")
    p.add_argument("--src", required=True, help="a local file or directory (e.g. ICLRec data/Beauty.txt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="user shuffle seed for a single file (default 0)")
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.set_defaults(handler=_fetch)
