"""`nudge sink`: consume the Nudge topics and write them to ClickHouse (the one process owning an embedded
store)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

from engine.config import Settings

if TYPE_CHECKING:
    from engine.clickhouse.sink import Sink


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sink", help="write events, actions, outcomes and dead letters to ClickHouse")
    parser.add_argument("--max-rows", type=int, default=5000, help="close a batch at this many records (5000)")
    parser.add_argument("--max-wait", type=float, default=1.0, help="close a batch this many seconds after it opened")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port (0 = off)")
    parser.set_defaults(func=run)


async def _run(sink: Sink) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sink.run(stop)


def run(args: argparse.Namespace) -> int:
    # Imported here: every `nudge` command builds the parser that imports this module.
    """Runs until SIGINT/SIGTERM, then flushes the batch in hand (if ClickHouse accepts it) and exits 0. Exit 1
    when the store cannot be opened (e.g. an embedded chDB path owned by another process).
    """
    from engine import metrics
    from engine.clickhouse.client import ClickHouseUnavailable, redact
    from engine.clickhouse.sink import Sink

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_rows < 1 or args.max_wait <= 0:
        print("nudge sink: --max-rows must be >= 1 and --max-wait > 0", file=sys.stderr)
        return 2
    if args.metrics_port:
        metrics.serve_metrics(args.metrics_port, settings.web_host)
    sink = Sink(settings, max_rows=args.max_rows, max_wait_s=args.max_wait)
    print(f"nudge sink: {settings.broker_url} → {redact(settings.clickhouse_dsn)}", file=sys.stderr)
    try:
        asyncio.run(_run(sink))
    except ClickHouseUnavailable as exc:
        print(f"nudge sink: {exc}", file=sys.stderr)
        return 1
    return 0
