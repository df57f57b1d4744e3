"""`nudge demo` (the `make demo` target): the whole pipeline on the bundled sample clickstream, then a summary
read back from ClickHouse. Everything it starts is stopped again, also on Ctrl-C. See engine/demo/run.py."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from engine.demo.options import DemoOptions


def register(sub: argparse._SubParsersAction) -> None:
    defaults = DemoOptions()
    parser = sub.add_parser("demo", help="run the end-to-end demo on the bundled sample clickstream")
    parser.add_argument("--root", type=Path, default=defaults.root, help="dev stack directory (.devstack)")
    parser.add_argument("--sample", type=Path, default=defaults.sample, help="clickstream JSON lines, .gz ok")
    parser.add_argument("--rules", type=Path, default=defaults.rules, help="rules directory (examples/rules)")
    parser.add_argument(
        "--connectors", type=Path, default=defaults.connectors, help="connectors (examples/connectors.yaml)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.demo.run import run_demo

    options = DemoOptions(root=args.root, sample=args.sample, rules=args.rules, connectors=args.connectors)
    try:
        import uvloop
    except ImportError:  # optional speed-up
        return asyncio.run(run_demo(options))
    return uvloop.run(run_demo(options))
