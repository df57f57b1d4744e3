"""`nudge replay --rules PATH --since 7d [--json] [--check]`: dry-run a rule set over the stored events.

Runs the live core over ClickHouse history (nothing is sent) and prints per rule how many actions it would
fire next to how many actually fired, matched by action id. Exit codes: 0 done (with `--check`: only if
identical), 1 ClickHouse unavailable or (with `--check`) a difference, 2 invalid rules or arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from engine.commands.report import over_history, table
from engine.config import Settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from engine.clickhouse.replay import ReplayResult


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replay", help="dry-run rules over stored events; compare with what fired")
    parser.add_argument("--rules", action="append", help="rule file or directory (default: NUDGE_RULES_PATH)")
    parser.add_argument("--since", default="7d", help="history window ending now: 30m, 24h, 7d, 2w")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--check", action="store_true", help="exit 1 unless replay equals what fired")
    parser.set_defaults(func=run)


def render(result: ReplayResult) -> str:
    rows = [[r.rule, r.would_fire, r.fired, r.matched, r.only_replay, r.only_live, r.pending] for r in result.rules]
    headers = ["rule", "would fire", "fired", "matched", "only replay", "only live", "pending"]
    verdict = "identical to what fired" if result.identical else "DIFFERS from what fired"
    skipped = f", {result.skipped_events} unreadable skipped" if result.skipped_events else ""
    title = f"Replay over {result.events} stored events{skipped} (dry run, nothing sent): {verdict}"
    return table(title, headers, rows)


def run(args: argparse.Namespace) -> int:
    # Imported here: every `nudge` command builds the parser that imports this module.
    from engine.clickhouse.replay import replay
    from engine.language import RuleFileError, load_rules

    settings = Settings.from_env()
    try:
        rules = load_rules(args.rules or [str(settings.rules_path)])
    except RuleFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    lateness_ms = int(settings.allowed_lateness_s * 1000)

    def query(client: Client, since_ms: int, until_ms: int) -> ReplayResult:
        return replay(client, rules, since_ms, until_ms, horizon_ms=until_ms - lateness_ms)

    code, result = over_history("replay", args, settings, query, lambda r: r.to_json(), render)
    return 1 if result is not None and args.check and not result.identical else code
