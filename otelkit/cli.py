"""The ``otelkit`` command. Each area adds its own subcommands through ``register``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Modules that contribute subcommands: each has register(subparsers).
COMMAND_MODULES = (
    "otelkit.collector.commands",
    "otelkit.logstore.commands",
    "otelkit.budgets.commands",
    "otelkit.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otelkit", description="Production observability for Python services."
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except BrokenPipeError:  # `otelkit ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


def _version() -> str:
    from otelkit import __version__

    return f"otelkit {__version__}"


if __name__ == "__main__":
    sys.exit(main())
