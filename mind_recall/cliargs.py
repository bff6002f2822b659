"""Command-line arguments every subcommand shares. Here, at the bottom, so each package can register its
subcommands (``add_commands``) without importing the command line itself (cli/, the top layer)."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--config", metavar="FILE", help="YAML config (defaults: config/default.yaml values)")
    p.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. -o runner.epochs=3 (repeatable)",
    )
