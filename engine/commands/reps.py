"""`nudge reps list|set-availability|check|serve`: the reps roster and who can take hot leads now."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine.assignment import Assigner, RosterError, UnknownRep, load_roster
from engine.config import Settings, redact_url


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("reps", help="sales reps roster: list, availability, check the roster file")
    parser.add_argument("--roster", type=Path, help="roster file (default: NUDGE_REPS_PATH or reps.yaml)")
    actions = parser.add_subparsers(dest="reps_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="reps with availability, duty, open leads and capacity")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    setter = actions.add_parser("set-availability", help="mark a rep away or available (run-time override)")
    setter.add_argument("rep_id", metavar="REP")
    setter.add_argument("status", choices=("away", "available"))
    actions.add_parser("check", help="validate the roster file and exit")
    serve = actions.add_parser(
        "serve",
        help="serve the assignment HTTP API (ack, availability) and run the SLA monitor",
        description="Serves POST /v1/leads/{id}/ack, PUT /v1/reps/{id}/availability, GET /v1/leads/{id}, "
        "/metrics and /healthz; every --interval seconds reassigns leads not acknowledged in time and "
        "produces the notifications to the actions topic.",
    )
    serve.add_argument("--host", default=None, help="address to bind (default NUDGE_WEB_HOST)")
    serve.add_argument("--port", type=int, default=6070, help="port (default 6070)")
    serve.add_argument("--interval", type=float, default=1.0, help="seconds between SLA passes (default 1)")
    parser.set_defaults(func=run)


async def _with_assigner(settings: Settings, roster_path: Path, args: argparse.Namespace) -> int:
    roster = load_roster(roster_path)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assigner = Assigner(client, roster)
        if args.reps_action == "set-availability":
            try:
                await assigner.set_availability(args.rep_id, args.status == "available")
            except UnknownRep:
                known = ", ".join(roster.rep_ids)
                print(
                    f"nudge reps: no rep {args.rep_id!r} in {roster_path}; known reps: {known}",
                    file=sys.stderr,
                )
                return 2
            print(f"{args.rep_id}: {args.status}")
            return 0
        statuses = await assigner.rep_statuses()
    finally:
        await client.aclose()
    if args.json:
        print(orjson.dumps([s.__dict__ for s in statuses], option=orjson.OPT_INDENT_2).decode())
        return 0
    header = (
        f"{'REP':<14} {'NAME':<22} {'STATUS':<10} {'ON DUTY':<8} {'OPEN/CAP':>9} {'TOTAL':>6}  TAKES LEADS"
    )
    print(header)
    for s in statuses:
        print(
            f"{s.id:<14} {s.name[:22]:<22} {'available' if s.available else 'away':<10} "
            f"{'yes' if s.on_duty else 'no':<8} {f'{s.open_leads}/{s.capacity}':>9} {s.assigned_total:>6}  "
            f"{'yes' if s.skip_reason is None else 'no (' + s.skip_reason + ')'}"
        )
    return 0


async def _serve(settings: Settings, roster_path: Path, args: argparse.Namespace) -> int:
    from engine.assignment.service import AssignmentService

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    service = AssignmentService(settings, load_roster(roster_path), interval_s=args.interval)
    await service.start(args.host or settings.web_host, args.port)
    print(
        f"nudge reps serve: listening on http://{args.host or settings.web_host}:{service.port}", flush=True
    )
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await service.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Reads the roster from `NUDGE_REPS_PATH` (default `reps.yaml`) and run-time state from Redis
    (`NUDGE_REDIS_URL`). `set-availability` changes the run-time override only (the same as
    `PUT /v1/reps/{id}/availability`); the file stays as it is. `serve` runs `AssignmentService`.
    Exit codes: 0 done, 1 Redis unreachable, 2 bad roster or unknown rep.
    """
    settings = Settings.from_env()
    roster_path = args.roster or settings.reps_path
    try:
        if args.reps_action == "check":
            roster = load_roster(roster_path)
            print(f"{roster_path}: {len(roster.reps)} reps, strategy {roster.strategy}, ack within "
                  f"{roster.sla.ack_within_s:g}s")  # fmt: skip
            return 0
        if args.reps_action == "serve":
            return asyncio.run(_serve(settings, roster_path, args))
        return asyncio.run(_with_assigner(settings, roster_path, args))
    except RosterError as exc:
        print(f"nudge reps: invalid roster:\n{exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        where = redact_url(settings.redis_url)
        print(
            f"nudge reps: Redis at {where} is unreachable ({exc}); start it or set NUDGE_REDIS_URL",
            file=sys.stderr,
        )
        return 1
