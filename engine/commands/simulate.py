"""`nudge simulate --rules PATH --events FILE.jsonl [--no-flush]`: run the rules offline over an event log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from engine.config import Settings
from engine.core.simulate import simulate
from engine.events import Event, InvalidEvent, format_ts, parse_event
from engine.language import RuleFileError, load_rules


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("simulate", help="run rules offline over a JSONL event file, print fired actions")
    parser.add_argument(
        "--rules", action="append", help="rule file or directory (repeatable; default: NUDGE_RULES_PATH)"
    )
    parser.add_argument("--events", required=True, help="JSONL file of Segment-spec events, or - for stdin")
    parser.add_argument("--no-flush", action="store_true", help="leave deadlines pending at the end unfired")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also report on stderr each firing a rule's cooldown, max_per_lead or if: stopped",
    )
    parser.add_argument(
        "--journeys",
        action="store_true",
        help="also report on stderr each journey record (entered, reached, exited, completed, goal)",
    )
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="also report on stderr each experiment record (assigned, goal)",
    )
    parser.set_defaults(func=run)


def read_events(stream: IO[bytes], name: str) -> Iterator[Event]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield parse_event(line)
        except InvalidEvent as exc:
            print(f"{name}:{number}: {exc.reason}: {exc.detail} (line skipped)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """One Segment-spec event per input line (`-` reads stdin); the output is one action JSON object per line
    (`Action.to_bytes()`: sorted keys, `fired_at` ISO-8601 Z) ordered by fired_at, byte-identical for the same input
    and rules. Invalid input lines are reported on stderr as `FILE:LINE: reason: detail` and skipped; blank lines
    are ignored. At end of input event time advances past every pending deadline unless `--no-flush`. With
    `--explain`, each firing a common gate stopped is reported on stderr as
    `suppressed: TIME LEAD RULE REASON` (reason `cooldown`, `max_per_lead` or `condition`), in evaluation order.
    With `--journeys`, each journey record (what the worker publishes on `lead-updates`) is reported on stderr as
    `journey: TIME LEAD JOURNEY EVENT STEP [REASON]` (`-` for no step), ordered like the actions.
    With `--experiments`, each experiment record (`assigned`, `goal`) is reported on stderr as
    `experiment: TIME LEAD EXPERIMENT EVENT VARIANT [VALUE]`. Journey actions carry `step`; actions of an
    experiment carry `experiment`, `variant` and `held_out`. The flush is bounded
    (`engine.core.simulate.FLUSH_HORIZON_MS`, `FLUSH_TICKS`).
    Exit codes: 0 done (even with skipped lines), 2 invalid rules or unreadable input.
    """
    rule_paths = args.rules or [str(Settings.from_env().rules_path)]
    try:
        rules = load_rules(rule_paths)
    except RuleFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        if args.events == "-":
            events = list(read_events(sys.stdin.buffer, "<stdin>"))
        else:
            with Path(args.events).open("rb") as stream:
                events = list(read_events(stream, args.events))
    except OSError as exc:
        print(f"nudge simulate: cannot read {args.events}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    suppressed: list[tuple[int, str, str, str]] | None = [] if args.explain else None
    updates: list[dict[str, Any]] | None = [] if args.journeys or args.experiments else None
    for action in simulate(rules, events, flush=not args.no_flush, suppressed=suppressed, updates=updates):
        out.write(action.to_bytes() + b"\n")
    out.flush()
    for at_ms, lead, rule, reason in suppressed or ():
        print(f"suppressed: {format_ts(at_ms)} {lead} {rule} {reason}", file=sys.stderr)
    for update in updates or ():
        if update.get("kind") == "journey" and args.journeys:
            print(journey_line(update), file=sys.stderr)
        elif update.get("kind") == "experiment" and args.experiments:
            print(experiment_line(update), file=sys.stderr)
    return 0


def journey_line(update: dict[str, Any]) -> str:
    """`journey: TIME LEAD JOURNEY EVENT STEP [REASON]`, one journey record as `--journeys` shows it."""
    parts = [format_ts(update["at_ms"]), update["lead_id"], update["journey"], update["event"], update["step"] or "-"]
    if update.get("reason"):
        parts.append(update["reason"])
    return "journey: " + " ".join(parts)


def experiment_line(update: dict[str, Any]) -> str:
    """`experiment: TIME LEAD EXPERIMENT EVENT VARIANT [VALUE]`, one experiment record as `--experiments` shows it."""
    parts = [format_ts(update["at_ms"]), update["lead_id"], update["experiment"], update["event"], update["variant"]]
    if update.get("value") is not None:
        parts.append(f"{update['value']:g}")
    return "experiment: " + " ".join(parts)
