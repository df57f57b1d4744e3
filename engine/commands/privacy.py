"""`nudge privacy`: erase, suppress, unsuppress and export a lead, and follow a request (docs/privacy.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson

from engine.config import Settings, redact_url


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("privacy", help="erase, suppress or export a lead (GDPR requests)")
    actions = parser.add_subparsers(dest="privacy_action", metavar="ACTION", required=True)
    erase = actions.add_parser(
        "erase", help="erase every record of a lead (and every id merged into it) and suppress its later events"
    )
    erase.add_argument("lead_id", metavar="LEAD_ID")
    erase.add_argument("--reason", default="", help="kept with the receipt (no personal data)")
    erase.add_argument(
        "--no-suppress", action="store_true", help="erase without suppressing: later events are taken again"
    )
    for name, text in (
        ("suppress", "drop the lead's later events everywhere (its records stay)"),
        ("unsuppress", "take the lead's events again"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("lead_id", metavar="LEAD_ID")
        action.add_argument("--reason", default="", help="kept with the request")
    status = actions.add_parser("status", help="where a request stands, per store")
    status.add_argument("request_id", metavar="REQUEST_ID")
    status.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to SECONDS for it")
    status.add_argument("--json", action="store_true", help="print JSON")
    export = actions.add_parser("export", help="one JSON document with everything Nudge holds about a lead")
    export.add_argument("lead_id", metavar="LEAD_ID")
    export.add_argument("--output", type=Path, help="write to this file instead of standard output")
    export.add_argument("--no-clickhouse", action="store_true", help="Redis only (a partial export: exit 1)")
    parser.set_defaults(func=run)


REQUEST_TYPES = {"erase": "Suppress_With_Delete", "suppress": "Suppress", "unsuppress": "Unsuppress"}


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 done (a request accepted, a request complete, a whole export), 1 a store unreachable, a
    request not complete within `--wait` (its pending stores are named) or an export missing a store, 2 bad input
    (an unknown request id)."""
    settings = Settings.from_env()
    action = args.privacy_action
    if action in REQUEST_TYPES:
        request_type = "Delete" if action == "erase" and args.no_suppress else REQUEST_TYPES[action]
        return asyncio.run(_submit(settings, request_type, args.lead_id, args.reason))
    if action == "status":
        return asyncio.run(_status(settings, args.request_id, args.wait, args.json))
    return asyncio.run(_export(settings, args.lead_id, args.output, not args.no_clickhouse))


async def _submit(settings: Settings, request_type: str, lead_id: str, reason: str) -> int:
    import redis.asyncio as aioredis

    from engine.privacy.requests import BadRequest, PrivacyRequests

    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10.0, socket_connect_timeout=5.0)
    try:
        request_id = await PrivacyRequests(settings, redis).submit(request_type, [lead_id], reason)
    except BadRequest as exc:
        print(f"nudge privacy: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Redis or the broker unreachable: nothing was handed to the workers
        print(
            f"nudge privacy: cannot accept the request ({type(exc).__name__}: {exc}); check NUDGE_REDIS_URL "
            f"({redact_url(settings.redis_url)}) and NUDGE_BROKER_URL ({settings.broker_url})",
            file=sys.stderr,
        )
        return 1
    finally:
        await redis.aclose()
    print(f"{request_type} request accepted; it completes through the running deployment.")
    print("Follow it with: nudge privacy status REQUEST_ID --wait 60")
    print(request_id)
    return 0


async def _status(settings: Settings, request_id: str, wait_s: float, as_json: bool) -> int:
    import redis.asyncio as aioredis

    from engine.privacy.requests import PrivacyRequests

    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10.0, socket_connect_timeout=5.0)
    deadline = time.monotonic() + max(0.0, wait_s)
    try:
        requests = PrivacyRequests(settings, redis)
        while True:
            status = await requests.status(request_id)
            if status is None:
                print(f"nudge privacy: no request {request_id!r} (unknown, or done 90+ days ago)", file=sys.stderr)
                return 2
            if status.done or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
    except Exception as exc:
        print(f"nudge privacy: cannot read Redis at {redact_url(settings.redis_url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    if as_json:
        print(orjson.dumps(status.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"request {status.request_id} ({status.request_type}): {'done' if status.done else status.stage}")
        for store, counts in status.counts.items():
            shown = ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "nothing"
            print(f"  {store:<11} {shown}")
    if not status.done:
        print(f"nudge privacy: not complete; pending: {', '.join(status.pending())}", file=sys.stderr)
        return 1
    return 0


async def _export(settings: Settings, lead_id: str, output: Path | None, clickhouse: bool) -> int:
    from engine.privacy.export import export

    doc = await export(settings, lead_id, clickhouse=clickhouse)
    text = orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2).decode()
    if output is not None:
        output.write_text(text + "\n")
    else:
        print(text)
    if doc["unavailable"]:
        for source, why in doc["unavailable"].items():
            print(f"nudge privacy: export incomplete: {source}: {why}", file=sys.stderr)
        return 1
    return 0
