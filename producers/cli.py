"""``mind-recall produce ...``: the producers register their own sub-commands here."""

from __future__ import annotations

import argparse
import importlib

# Each module has ``add_produce_commands(sub)``; missing ones (not written yet) are skipped.
PRODUCER_MODULES = ("producers.items", "producers.traffic")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    produce = sub.add_parser("produce", help="publish items, clicks or recall requests to Kafka")
    produce_sub = produce.add_subparsers(dest="produce_command", metavar="WHAT")
    produce_sub.required = True
    for name in PRODUCER_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.add_produce_commands(produce_sub)
