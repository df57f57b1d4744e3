"""The `nudge` command line: one sub-command per module under `engine/commands/`, discovered by module, so a new
command is one new file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from engine import commands
from engine.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nudge", description="Nudge: a real-time behavior engine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `nudge` with `argv` (default `sys.argv[1:]`) and return the exit code: 0 success, 1 runtime failure,
    2 bad input (usage, invalid rules). Each `engine.commands` module exposes `register(subparsers) -> None`; the
    parser it adds sets `func(args) -> int` as its default.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"nudge: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
