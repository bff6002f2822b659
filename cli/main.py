"""``mind-recall`` command line: one entry point, subcommands registered by each package.

Each package's ``cli`` module has ``add_commands(sub)``; a command's handler receives the loaded
settings and the parsed arguments and returns an exit code. This is the top layer (docs/design.md,
"Layers"): it may import every package, and is where implementations are plugged into the layers below
(``model.cli.SEARCHERS["milvus"]``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mind_recall import logs
from mind_recall.cliargs import add_config_args
from mind_recall.settings import ConfigError, Settings, load

Handler = Callable[[Settings, argparse.Namespace], int]

# Packages that contribute subcommands; imported lazily so `config show` never loads Paddle.
COMMAND_MODULES = (
    "model.cli", "model.data_cli", "worker.items_cli", "worker.recall_cli", "producers.cli",
    "cli.demo",
)


def _config_show(settings: Settings, args: argparse.Namespace) -> int:
    sys.stdout.write(settings.dump(mask_secrets=True))
    return 0


def plug_in() -> None:
    """Implementations of the serving layer for the layers below it (injected here, at the top, so that
    model/ never imports worker/): evaluation against the serving store."""
    from model import infer

    def milvus(settings: Settings, ids: Any, vectors: Any) -> Any:
        from worker.eval_index import milvus_searcher

        return milvus_searcher(settings, ids, vectors)

    infer.SEARCHERS.setdefault("milvus", milvus)


def build_parser() -> argparse.ArgumentParser:
    plug_in()
    parser = argparse.ArgumentParser(prog="mind-recall", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (env MIND_RECALL_LOG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    cfg = sub.add_parser("config", help="inspect the effective configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    cfg_sub.required = True
    show = cfg_sub.add_parser("show", help="print the effective config (secrets masked)")
    add_config_args(show)
    show.set_defaults(handler=_config_show)

    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # that package does not provide commands (yet)
            raise
        mod.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:  # pragma: no cover - argparse enforces a subcommand
        parser.print_help()
        return 2
    try:
        settings = load(getattr(args, "config", None), overrides=getattr(args, "override", []))
    except ConfigError as e:
        print(f"mind-recall: {e}", file=sys.stderr)
        return 2
    try:
        return int(handler(settings, args) or 0)
    except ConfigError as e:
        print(f"mind-recall: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run(argv: Sequence[str] | None = None) -> Any:  # console-script friendly
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
