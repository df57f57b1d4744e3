"""`nudge report [--since 7d] [--attribution 7d] [--journeys] [--json]`: the KPIs from ClickHouse, as readable tables
or one JSON document (`--journeys`: the journey KPIs per journey and step instead). When experiments with a holdout
have enough data, the KPI report leads with their measured incremental revenue; attributed revenue follows, labelled.

`nudge report experiments [--since 30d] [--json]`: per experiment and arm, leads assigned, actions sent, conversions,
rate, revenue per lead; each variant against the holdout (and the first variant) with 95 % intervals, the always-valid
test's verdict and incremental revenue (docs/experiments.md).

Exit codes: 0 printed, 1 ClickHouse unavailable (for an embedded store: owned by a running `nudge sink`),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from engine.config import Settings
from engine.events import format_ts

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Result = TypeVar("Result")
DEFAULT_ATTRIBUTION_MS = 7 * 86_400_000  # engine.clickhouse.kpis.ATTRIBUTION_WINDOW_MS (not imported: see over_history)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report", help="print KPIs (funnel, abandonment, nudges, recovery, delays, reps); `report experiments`: uplift"
    )
    parser.add_argument(
        "view",
        nargs="?",
        choices=["experiments"],
        help="experiments: per experiment and arm, conversions and uplift against the holdout (docs/experiments.md)",
    )
    parser.add_argument(
        "--since",
        default=None,
        help="window ending now: 30m, 24h, 7d, 2w (default 7d; 30d for experiments, by assignment time)",
    )
    parser.add_argument(
        "--attribution",
        default="7d",
        help="recovered revenue: credit an order to the latest marketing nudge *sent* to the lead at most this long "
        "before it (last touch; default 7d)",
    )
    parser.add_argument(
        "--journeys",
        action="store_true",
        help="journey KPIs instead: per journey and step, leads entered, steps reached, sends fired and sent, exits "
        "by reason, completed, goal (converted)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.set_defaults(func=run)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; numbers right-aligned, None shown as '-'."""
    cells = [[("-" if v is None else f"{v:,.2f}" if isinstance(v, float) else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [title, line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells] if cells else ["(none)"]
    return "\n".join(out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render(report: dict[str, Any]) -> str:
    w = report["window"]
    parts = [f"Nudge report {format_ts(w['since_ms'])} .. {format_ts(w['until_ms'])}"]
    if report.get("incremental_revenue"):  # measured uplift first: the figure to trust (nudge report experiments)
        parts.append(incremental_line(report["incremental_revenue"]))
    parts.append(
        table(
            "Funnel (leads, in order)",
            ["step", "leads", "from previous"],
            [[s["step"], s["leads"], _pct(s["from_previous"])] for s in report["funnel"]],
        )
    )
    ab = report["abandonment"]
    parts.append(f"Abandonment: {ab['abandoned']} of {ab['carts']} carts ({_pct(ab['rate'])})")
    steps = ["fired", "sent", "failed", "suppressed", "deferred", "retried", "duplicate"]
    parts.append(
        table(
            "Nudges per rule (distinct actions per step)",
            ["rule", *steps],
            [[r["rule"], *(r.get(s, 0) for s in steps)] for r in report["nudges"]],
        )
    )
    parts.append(
        table(
            "Not sent (final outcome suppressed or failed), by reason",
            ["rule", "outcome", "reason", "actions"],
            [[r["rule"], r["outcome"], r["reason"] or "-", r["actions"]] for r in report.get("not_sent", [])],
        )
    )
    rec = report["recovered"]
    attribution = rec.get("attribution") or {}
    window = duration_text(int(attribution.get("window_ms") or DEFAULT_ATTRIBUTION_MS))
    parts.append(
        table(
            f"Recovered revenue: {rec['orders']} orders, {rec['revenue']:,.2f}\n"
            f"(attributed, not measured: an order counts when a marketing nudge was actually sent to the lead at "
            f"most {window} before it, "
            "credited to the latest one: last touch; nudges fired but suppressed or failed earn nothing)",
            ["rule", "orders", "revenue"],
            [[r["rule"], r["orders"], r["revenue"]] for r in rec["by_rule"]],
        )
    )
    det = report["detection_delay"]
    rows = [[r["rule"], r["count"], r["p50_ms"], r["p95_ms"]] for r in det["by_rule"]]
    if det["overall"]:
        o = det["overall"]
        rows.append(["(all)", o["count"], o["p50_ms"], o["p95_ms"]])
    parts.append(table("Detection delay (event time → fired), ms", ["rule", "actions", "p50", "p95"], rows))
    parts.append(
        table(
            "Delivery delay (fired → sent), ms",
            ["connector", "sent", "p50", "p95"],
            [[r["connector"], r["count"], r["p50_ms"], r["p95_ms"]] for r in report["delivery_delay"]],
        )
    )
    parts.append(
        table(
            "Hot leads per rep",
            ["rep", "hot leads", "touched", "time to first touch p50 (min)"],
            [
                [
                    r["rep"],
                    r["hot_leads"],
                    r["touched"],
                    None if r["time_to_first_touch_p50_ms"] is None else r["time_to_first_touch_p50_ms"] / 60000,
                ]
                for r in report["hot_leads"]
            ],
        )
    )
    return "\n\n".join(parts)


def _exits(exited: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(exited.items())) or "-"


def render_journeys(report: dict[str, Any]) -> str:
    """The `--journeys` table: per journey a `(journey)` line (entered, sends, exits, completed, goal and its rate
    of entries), then one line per step in the order leads reach it."""
    w = report["window"]
    rows: list[list[Any]] = []
    for j in report["journeys"]:
        goal = f"{j['goal']} ({_pct(j['goal_rate'])})"
        rows.append([j["journey"], "(journey)", j["entered"], j["fired"], j["sent"], _exits(j["exited"]),
                     j["completed"], goal])  # fmt: skip
        for s in j["steps"]:
            rows.append(["", s["step"], s["reached"], s["fired"], s["sent"], _exits(s["exited"]), s["completed"],
                         str(s["goal"])])  # fmt: skip
    return "\n\n".join(
        [
            f"Nudge journeys {format_ts(w['since_ms'])} .. {format_ts(w['until_ms'])}",
            table(
                "Journeys: leads entered (journey line) or steps reached, sends fired and sent, exits by reason,\n"
                "completed, goal (the journey's goal: matched within goal_within of entry = converted)",
                ["journey", "step", "entered/reached", "fired", "sent", "exited", "completed", "goal"],
                rows,
            ),
        ]
    )


def duration_text(ms: int) -> str:
    """7 d, 36 h, 90 min, 45 s: the largest unit (days at most) that divides `ms` exactly."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms / 1000:g} s"


def over_history(
    command: str,
    args: argparse.Namespace,
    settings: Settings,
    query: Callable[[Client, int, int], Result],
    to_json: Callable[[Result], Any],
    render: Callable[[Result], str],
) -> tuple[int, Result | None]:
    """The flow of the commands that read the ClickHouse history (`report`, `replay`): parse `args.since`, open
    and migrate the store, run `query(client, since_ms, until_ms)`, close, print the result (`--json`: one JSON
    document). Returns (exit code, result): 2 and None for a bad window, 1 and None when the store is
    unreachable (the reason printed to stderr), else 0 and the result."""
    # Imported here, not at module level: every `nudge` command builds the parser that imports this module.
    from engine.clickhouse import kpis
    from engine.clickhouse.client import ClickHouseUnavailable, connect
    from engine.clickhouse.migrations import migrate

    try:
        since_ms, until_ms = kpis.window(args.since)
    except ValueError as exc:
        print(f"nudge {command}: {exc}", file=sys.stderr)
        return 2, None
    try:
        client = connect(settings.clickhouse_dsn)
    except ClickHouseUnavailable as exc:
        print(f"nudge {command}: {exc}", file=sys.stderr)
        return 1, None
    try:
        migrate(client)
        result = query(client, since_ms, until_ms)
    finally:
        client.close()
    print(orjson.dumps(to_json(result), option=orjson.OPT_INDENT_2).decode() if args.json else render(result))
    return 0, result


def _signed(value: float | None, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:+,.{digits}f}{unit}"


def _range(interval: Sequence[float] | None, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    if interval is None:
        return "-"
    return f"{_signed(interval[0], scale, unit, digits)} .. {_signed(interval[1], scale, unit, digits)}"


def incremental_line(total: dict[str, Any]) -> str:
    """The measured figure the KPI report leads with."""
    low, high = total["ci95"]
    return (
        f"Incremental revenue (measured against holdouts): {total['revenue']:,.2f} (95 % interval {low:,.2f} .. "
        f"{high:,.2f}), experiments: {', '.join(total['experiments'])}"
    )


def _comparison_row(c: dict[str, Any]) -> list[Any]:
    seq = c["sequential"]
    verdict = c["verdict"] if seq is None else f"{c['verdict']} (p {seq['p_value']:.3f})"
    return [
        f"{c['arm']} vs {c['baseline']}",
        _signed(c["absolute_uplift"], 100, " pp"),
        _range(c["absolute_uplift_ci95"], 100, " pp"),
        _signed(c["relative_uplift"], 100, "%", 0),
        _range(c["relative_uplift_ci95"], 100, "%", 0),
        verdict,
        _signed(c["incremental_revenue"], digits=2),
        _range(c["incremental_revenue_ci95"], digits=2),
    ]


def experiment_configs(rules_path: Path) -> dict[str, tuple[float, list[tuple[str, float]]]]:
    """The experiments of the rules at `rules_path` (NUDGE_RULES_PATH) by id: (holdout, [(variant, weight)]), for
    the sample-ratio check. Empty when the rules are missing or do not load (the report works without them)."""
    from engine.clickhouse.experiments import configs
    from engine.language import load_rules

    try:
        rules = load_rules([rules_path])
    except Exception:  # any problem: report without the check rather than fail
        return {}
    return configs(rules)


def _balance_line(balance: dict[str, Any] | None) -> str:
    if balance is None:
        return "Sample ratio: not checked (the experiment is not in the rules at NUDGE_RULES_PATH)"
    shares = ", ".join(f"{arm} {share * 100:.0f}%" for arm, share in balance["expected_shares"].items())
    if balance.get("p_value") is None:
        return f"SAMPLE RATIO MISMATCH: {balance['note']} (configured: {shares}); do not trust the uplift"
    if balance["mismatch"]:
        return (
            f"SAMPLE RATIO MISMATCH: the arms do not split as configured ({shares}; chi-square p "
            f"{balance['p_value']:.2g}): assignment, logging or a mid-experiment change is off; do not trust the uplift"
        )
    return f"Sample ratio: arms split as configured ({shares}; chi-square p {balance['p_value']:.2f})"


def render_experiments(report: dict[str, Any]) -> str:
    """`nudge report experiments`: per experiment its arms, then each comparison and the treated-vs-holdout line."""
    w = report["window"]
    parts = [f"Nudge experiments, people assigned {format_ts(w['since_ms'])} .. {format_ts(w['until_ms'])}"]
    if not report["experiments"]:
        parts.append("(no experiment assigned anyone in this window)")
    for e in report["experiments"]:
        arms = [
            [a["arm"], a["leads"], a["actions_sent"], a["conversions"], _pct(a["conversion_rate"]),
             a["revenue_per_lead"]]
            for a in e["arms"]
        ]
        headers = ["arm", "leads", "actions sent", "conversions", "rate", "revenue/lead"]
        arms_table = table(f"Experiment {e['experiment']} (rule {', '.join(e['rules'])})", headers, arms)
        parts.append(arms_table + "\n" + _balance_line(e.get("balance")))
        rows = [_comparison_row(c) for c in e["comparisons"]]
        if e["overall"] is not None and e["overall"]["arm"] not in {c["arm"] for c in e["comparisons"]}:
            rows.append(_comparison_row(e["overall"]))
        parts.append(
            table(
                "Uplift (arm minus baseline; 95 % intervals; verdict from the always-valid sequential test)",
                ["comparison", "uplift", "95 % CI", "relative", "95 % CI", "verdict", "incremental", "95 % CI"],
                rows,
            )
        )
    minimum = report["method"]["minimum"]
    if report.get("incremental_revenue"):
        parts.append(incremental_line(report["incremental_revenue"]))
    parts.append(
        f"Conversions: leads with a goal event within goal_within of their assignment. Verdicts need >= "
        f"{minimum['leads_per_arm']} leads per arm and >= {minimum['conversions']} conversions; the sequential test "
        "(mSPRT) stays valid however often you look. docs/experiments.md"
    )
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    from engine.clickhouse import kpis

    experiments = getattr(args, "view", None) == "experiments"
    if getattr(args, "since", None) is None:
        args.since = "30d" if experiments else "7d"
    if experiments:

        settings = Settings.from_env()
        configs = experiment_configs(settings.rules_path)

        def query_experiments(client: Client, since_ms: int, until_ms: int) -> dict[str, Any]:
            from engine.clickhouse import experiments as ex

            return ex.report(client, since_ms, until_ms, configs)

        code, _ = over_history("report experiments", args, settings, query_experiments, lambda r: r, render_experiments)
        return code

    try:
        attribution_ms = kpis.parse_duration(args.attribution, "--attribution")
    except ValueError as exc:
        print(f"nudge report: {exc}", file=sys.stderr)
        return 2

    def query(client: Client, since_ms: int, until_ms: int) -> dict[str, Any]:
        if getattr(args, "journeys", False):
            from engine.clickhouse.journeys import journey_kpis

            window = {"since_ms": since_ms, "until_ms": until_ms}
            return {"window": window, "journeys": journey_kpis(client, since_ms, until_ms)}
        return kpis.report(client, since_ms, until_ms, attribution_ms)

    shown = render_journeys if getattr(args, "journeys", False) else render
    code, _ = over_history("report", args, Settings.from_env(), query, lambda report: report, shown)
    return code
