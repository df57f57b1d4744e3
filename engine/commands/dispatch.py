"""`nudge dispatch`: run the dispatcher (topic `actions` → connectors) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import Settings

if TYPE_CHECKING:
    from engine.dispatch.config import ConnectorsFile


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dispatch", help="deliver fired actions through the configured connectors")
    parser.add_argument(
        "--connectors", type=Path, default=None, help="connectors file (default: NUDGE_CONNECTORS_PATH)"
    )
    parser.add_argument("--metrics-port", type=int, default=6068, help="port for /metrics; 0 turns it off")
    parser.add_argument(
        "--check", action="store_true", help="validate the connectors file (and what start-up refuses) and exit"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.config import ConfigError
    from engine.dispatch.config import load_connectors, startup_problems

    settings = Settings.from_env()
    path = args.connectors or settings.connectors_path
    config = load_connectors(path)
    problems = startup_problems(config, settings)  # outside the dev profile: marketing email needs its secret
    if problems:
        raise ConfigError("; ".join(problems))
    if args.check:
        print(f"{path}: {len(config.connectors)} connectors OK ({', '.join(config.connectors)})")
        return 0
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.metrics_port:
        from engine.metrics import serve_metrics

        serve_metrics(args.metrics_port, settings.web_host)
    asyncio.run(_main(settings, config))
    return 0


async def _main(settings: Settings, config: ConnectorsFile) -> None:
    from engine.dispatch.dispatcher import Dispatcher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Dispatcher(settings, config).run_until(stop)
