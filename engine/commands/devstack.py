"""`nudge dev-stack up|down|status`: the local broker, Redis and chDB path for the demo and tests."""

from __future__ import annotations

import argparse
import sys

import orjson

from engine.devstack import DevStack, DevStackError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dev-stack", help="start/stop the local development services")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--root", default=".devstack", help="directory for pid files, logs and data")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stack = DevStack(args.root)
    if args.action == "up":
        try:
            info = stack.up()
        except DevStackError as exc:
            print(f"nudge dev-stack: {exc}", file=sys.stderr)
            return 1
        for key, value in info.env().items():
            print(f"export {key}={value}")
        return 0
    if args.action == "down":
        stack.down()
        return 0
    print(orjson.dumps(stack.status(), option=orjson.OPT_INDENT_2).decode())
    return 0
