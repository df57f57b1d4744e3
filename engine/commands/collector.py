"""`nudge collector`: serve the Segment-compatible HTTP tracking API (see engine/collector/app.py)."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from engine.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "collector",
        help="run the Segment-compatible HTTP collector (POST /v1/batch, /v1/track, ...)",
        description="Accept Segment/RudderStack SDK traffic and produce it to the clickstream topic. "
        "Write keys come from NUDGE_WRITE_KEYS (comma-separated), the port from NUDGE_COLLECTOR_PORT.",
    )
    parser.add_argument("--host", default=None, help="address to bind (default NUDGE_WEB_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default NUDGE_COLLECTOR_PORT, 8088)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    from engine.collector.app import create_app  # imported late: `nudge --help` stays fast

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings)  # raises ConfigError (exit 2) when no write key is configured
    host = args.host or settings.web_host
    port = args.port or settings.collector_port
    banner = f"nudge collector listening on http://{host}:{port}"
    web.run_app(app, host=host, port=port, print=lambda _: print(banner))
    return 0
