"""`nudge dead-letters redrive [--rule R] [--since D]`: send the actions the dispatcher dead-lettered again."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def _since(text: str) -> int:
    from engine.dispatch.redrive import parse_since

    try:
        return parse_since(text, int(time.time() * 1000))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dead-letters", help="work with the dead-letters topic")
    actions = parser.add_subparsers(dest="dead_letters_command", metavar="ACTION", required=True)
    redrive = actions.add_parser(
        "redrive",
        help="produce the actions the dispatcher dead-lettered to `actions` again (idempotency still applies)",
        description="Reads `dead-letters` from the beginning and produces every action the dispatcher could not "
        "deliver (source dispatcher, payload an action) to `actions` again, each action id once. An id already "
        "delivered is not sent twice: the dispatcher's idempotency claims decide, as for any action.",
    )
    redrive.add_argument("--rule", default=None, help="only actions of this rule id")
    redrive.add_argument(
        "--since",
        type=_since,
        default=None,
        metavar="D",
        help="only letters written since D: a duration back from now (90m, 4h, 1d) or an ISO date/time "
        "(2026-01-05, 2026-01-05T10:00:00Z; UTC unless an offset is given)",
    )
    redrive.set_defaults(func=run_redrive)


def run_redrive(args: argparse.Namespace) -> int:
    """Exit 0 after printing how many actions were re-driven; 1 when the broker cannot be reached; 2 for bad
    arguments (argparse)."""
    from aiokafka.errors import KafkaError

    from engine.config import Settings
    from engine.dispatch.redrive import RedriveSelection, redrive

    settings = Settings.from_env()
    selection = RedriveSelection(rule=args.rule, since_ms=args.since)
    try:
        result = asyncio.run(redrive(settings, selection))
    except (KafkaError, OSError) as exc:
        print(f"nudge dead-letters redrive: broker {settings.bootstrap_servers} failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"re-drove {len(result.redriven)} actions to {settings.topic('actions')} "
        f"({result.letters_read} dead letters read)"
    )
    return 0
