"""`nudge collector`: serve the Segment-compatible HTTP tracking API (see engine/collector/app.py)."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from engine.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "collector",
        help="run the Segment-compatible HTTP collector (POST /v1/batch, /v1/track, ...)",
        description="Accept Segment/RudderStack SDK traffic and produce it to the clickstream topic. "
        "Browser write keys come from NUDGE_WRITE_KEYS, server write keys from NUDGE_SERVER_WRITE_KEYS "
        "(comma-separated), the port from NUDGE_COLLECTOR_PORT; see docs/collector.md.",
    )
    parser.add_argument("--host", default=None, help="address to bind (default NUDGE_WEB_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default NUDGE_COLLECTOR_PORT, 8088)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    from engine.collector.app import ACCESS_LOG, ReducedAccessLog, create_app  # late: `nudge --help` stays fast

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings)  # raises ConfigError (exit 2) for no write key or unusable edge settings
    host = args.host or settings.web_host
    port = args.port or settings.collector_port
    banner = f"nudge collector listening on http://{host}:{port}"
    # The access log carries no client address, Referer or URL, and only at debug level (ReducedAccessLog).
    web.run_app(
        app,
        host=host,
        port=port,
        print=lambda _: print(banner),
        access_log=ACCESS_LOG,
        access_log_class=ReducedAccessLog,
    )
    return 0
