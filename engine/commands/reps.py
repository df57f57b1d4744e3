"""`nudge reps list|set-availability|check|queue|release|reassign|link|serve`: the reps roster, who can take hot
leads now, the queue of waiting leads, moving a lead by hand, and the reps' sign-in links."""

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
from engine.assignment.links import RepLinks
from engine.assignment.roster import parse_duration_s
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
    queue = actions.add_parser("queue", help="hot leads waiting for a rep, in the order they will be assigned")
    queue.add_argument("--json", action="store_true", help="print JSON instead of a table")
    release = actions.add_parser("release", help="free a lead's rep (or take it out of the queue)")
    release.add_argument("lead_id", metavar="LEAD_ID")
    release.add_argument("--reason", default="released by hand", help="recorded in the assignment history")
    reassign = actions.add_parser("reassign", help="give a lead (owned or queued) to a named rep")
    reassign.add_argument("lead_id", metavar="LEAD_ID")
    reassign.add_argument("rep_id", metavar="REP")
    reassign.add_argument("--force", action="store_true", help="even if the rep is away or at capacity")
    link = actions.add_parser(
        "link",
        help="print a rep's signed sign-in URL for the inbox",
        description="Prints NUDGE_REPS_PUBLIC_URL/inbox/signin?rep=..&exp=..&sig=..; opening it starts an inbox "
        "session for the rep. Anyone holding the URL can sign in as the rep until it expires: send it privately.",
    )
    link.add_argument("rep_id", metavar="REP_ID")
    link.add_argument("--expires", default="7d", help="how long the link works: 30m, 12h, 7d (default 7d)")
    serve = actions.add_parser(
        "serve",
        help="serve the assignment API and the reps' inbox; run the SLA, queue and release loops",
        description="Serves the /v1 API (bearer NUDGE_REPS_API_TOKEN), the inbox (/inbox, signed sign-in "
        "links) and the one-click links (/links/ack, /links/pass), plus /metrics and /healthz; every --interval "
        "seconds (and whenever capacity frees) reassigns leads not acknowledged in time, assigns waiting leads, "
        "alerts about long waits and publishes every assignment change to lead-updates.",
    )
    serve.add_argument("--host", default=None, help="address to bind (default NUDGE_WEB_HOST)")
    serve.add_argument("--port", type=int, default=6070, help="port (default 6070)")
    serve.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve /metrics and /healthz on this port instead (then the main port answers nothing without "
        "credentials)",
    )  # fmt: skip
    serve.add_argument("--interval", type=float, default=1.0, help="seconds between passes (default 1)")
    parser.set_defaults(func=run)


def _print_queue(assigner_items: list, as_json: bool, now_ms: int) -> None:
    if as_json:
        rows = [{"lead_id": i.lead_id, "position": i.position, "queued_at_ms": i.queued_at_ms,
                 "priority": i.priority, "score": i.score, "tried": list(i.tried)} for i in assigner_items]  # fmt: skip
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    print(f"{'#':>4}  {'LEAD':<30} {'PRIORITY':>8} {'SCORE':>7} {'WAITING':>9}")
    for item in assigner_items:
        waited = max(0, now_ms - item.queued_at_ms) // 1000
        print(f"{item.position:>4}  {item.lead_id[:30]:<30} {item.priority:>8} {item.score:>7g} {waited:>8}s")
    if not assigner_items:
        print("(no lead waits for a rep)")


async def _move(settings: Settings, assigner: Assigner, args: argparse.Namespace) -> int:
    """`release` and `reassign`: the change is made in Redis (history and outbox included); a reassignment's
    notifications are produced to `actions` for the dispatcher. A running `nudge reps serve` assigns the freed
    capacity to the queue at once (wake signal) and publishes the change to `lead-updates`."""
    if args.reps_action == "release":
        result = await assigner.release(args.lead_id, reason=args.reason, by="cli")
        messages = {
            "released": f"{args.lead_id}: released (was {result.owner})",
            "dequeued": f"{args.lead_id}: taken out of the queue",
        }
        if result.status not in messages:
            print(f"nudge reps: lead {args.lead_id!r} has no owner and is not queued", file=sys.stderr)
            return 1
        print(messages[result.status])
        return 0
    from aiokafka import AIOKafkaProducer

    from engine.assignment.operations import RepOperations
    from engine.kafka import topics
    from engine.kafka.security import client_options

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", **client_options(settings))

    async def publish(actions) -> None:  # type: ignore[no-untyped-def]
        await producer.start()
        for action in actions:
            await producer.send_and_wait(settings.topic(topics.ACTIONS), action.to_bytes(), key=action.lead_id.encode())

    try:
        try:
            assignment, why = await RepOperations(assigner, publish).reassign_to(
                args.lead_id, args.rep_id, by="cli", force=args.force
            )
        except UnknownRep:
            print(f"nudge reps: no rep {args.rep_id!r} in the roster; known reps: "
                  f"{', '.join(assigner.roster.rep_ids)}", file=sys.stderr)  # fmt: skip
            return 2
    finally:
        await producer.stop()
    problems = {
        "same": f"{args.lead_id} already belongs to {args.rep_id}",
        "unknown": f"lead {args.lead_id!r} has no owner and is not queued",
        "away": f"{args.rep_id} is away or off hours (use --force to assign anyway)",
        "full": f"{args.rep_id} is at capacity (use --force to assign anyway)",
        "moved": "the lead changed meanwhile; try again",
    }
    if assignment is None or why != "ok":
        print(f"nudge reps: {problems.get(why, why)}", file=sys.stderr)
        return 0 if why == "same" else 1
    print(f"{args.lead_id}: now owned by {args.rep_id} (SLA clock restarted)")
    return 0


async def _with_assigner(settings: Settings, roster_path: Path, args: argparse.Namespace) -> int:
    roster = load_roster(roster_path)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assigner = Assigner(client, roster)
        if args.reps_action in ("release", "reassign"):
            return await _move(settings, assigner, args)
        if args.reps_action == "queue":
            _print_queue(await assigner.queue(1000), args.json, assigner.now_ms())
            return 0
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
    await service.start(args.host or settings.web_host, args.port, args.metrics_port)
    print(
        f"nudge reps serve: listening on http://{args.host or settings.web_host}:{service.port}", flush=True
    )
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await service.stop()
    return 0


def _link(settings: Settings, roster, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    if roster.rep(args.rep_id) is None:
        print(f"nudge reps: no rep {args.rep_id!r} in the roster; known reps: {', '.join(roster.rep_ids)}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        ttl_s = parse_duration_s(args.expires)
    except ValueError as exc:
        print(f"nudge reps: --expires {exc}", file=sys.stderr)
        return 2
    print(RepLinks.from_settings(settings).signin_url(args.rep_id, ttl_s))
    return 0


def run(args: argparse.Namespace) -> int:
    """Reads the roster from `NUDGE_REPS_PATH` (default `reps.yaml`) and run-time state from Redis
    (`NUDGE_REDIS_URL`). `set-availability` changes the run-time override only (the same as
    `PUT /v1/reps/{id}/availability`); the file stays as it is. `serve` runs `AssignmentService`. `link` needs
    NUDGE_REPS_LINK_SECRET (and NUDGE_REPS_PUBLIC_URL) as `nudge reps serve` has them.
    Exit codes: 0 done, 1 Redis unreachable or nothing to release/reassign, 2 bad roster, unknown rep or a bad
    setting.
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
        if args.reps_action == "link":
            return _link(settings, load_roster(roster_path), args)
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
