"""`nudge leads show LEAD_ID`: everything Nudge knows about one lead, from every store that is reachable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.collector.identity import PROFILE_PREFIX, read_profile
from engine.config import Settings, redact_url

RECENT = 20


@dataclass
class LeadReport:
    """What `leads show` gathered; `unavailable` maps a source name to why it could not be read."""

    lead_id: str
    profile: dict[str, Any] = field(default_factory=dict)
    owner: dict[str, Any] | None = None
    assignment_history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    assigned_lead: dict[str, Any] = field(default_factory=dict)  # the lead context stored with its owner
    merged_ids: list[str] = field(default_factory=list)  # ids merged into the lead, whose history is shown too
    journeys: list[dict[str, Any]] = field(default_factory=list)  # JourneyStatus.to_json() per journey

    @property
    def known(self) -> bool:
        return bool(self.profile or self.owner or self.assignment_history or self.events or self.updates)

    def latest(self, name: str) -> Any:
        """Newest `name` (score, stage) in the lead updates, else the profile, else the assignment's copy."""
        for update in reversed(self.updates):
            payload = update.get("payload") or {}
            if isinstance(payload, dict) and payload.get(name) is not None:
                return payload[name]
        if self.profile.get(name) is not None:
            return self.profile[name]
        if self.assigned_lead.get(name) is not None:
            return f"{self.assigned_lead[name]} (when assigned)"
        return None

    def score_history(self) -> list[tuple[Any, Any]]:
        return [
            (u["at"], u["payload"]["score"])
            for u in self.updates
            if isinstance(u.get("payload"), dict) and u["payload"].get("score") is not None
        ]


async def _from_redis(settings: Settings, report: LeadReport) -> None:
    from engine.assignment.store import AssignmentStore

    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        report.profile = read_profile(await client.hgetall(PROFILE_PREFIX + report.lead_id))
        store = AssignmentStore(client)
        owner = await store.owner(report.lead_id)
        if owner.get("rep"):
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                report.assigned_lead = orjson.loads(owner.pop("lead", "{}"))
            report.owner = owner
        report.assignment_history = await store.history(report.lead_id)
    except Exception as exc:  # any Redis failure: show what the other sources have
        report.unavailable["redis"] = f"{redact_url(settings.redis_url)}: {exc}"
    finally:
        await client.aclose()


def _query(client: Any, sql: str, ids: list[str]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters={"ids": ids})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _from_clickhouse(settings: Settings, report: LeadReport) -> None:
    try:
        from engine.clickhouse.client import connect
        from engine.clickhouse.history import lead_actions
        from engine.clickhouse.merged_history import merged_ids
    except ImportError as exc:
        report.unavailable["clickhouse"] = f"engine.clickhouse not installed ({exc})"
        return
    dsn = settings.clickhouse_dsn
    if dsn.startswith("chdb:///") and not Path(dsn.removeprefix("chdb://")).exists():
        # opening a missing path would create an empty store as a side effect of a read-only command
        report.unavailable["clickhouse"] = f"no ClickHouse store at {dsn} (set NUDGE_CLICKHOUSE_DSN)"
        return
    try:
        client = connect(dsn)
    except Exception as exc:
        report.unavailable["clickhouse"] = str(exc)
        return
    try:
        # One person, one history: every id merged into the lead (its anonymous ids and aliases).
        ids = [report.lead_id]
        with contextlib.suppress(Exception):  # no events table yet: the queries below say so
            ids = merged_ids(client, report.lead_id)
        report.merged_ids = ids[1:]
        tables = {
            "events": "SELECT timestamp AS at, type, name, properties FROM events FINAL "
            f"WHERE lead_id IN {{ids:Array(String)}} ORDER BY timestamp DESC LIMIT {RECENT}",
            # Journey records have their own section (below): a lead in journeys has many, which would crowd the
            # stage and score changes out of these 200.
            "updates": "SELECT at, kind, rep, payload FROM lead_updates FINAL "
            "WHERE lead_id IN {ids:Array(String)} AND kind != 'journey' ORDER BY at LIMIT 200",
        }
        for name, sql in tables.items():
            try:
                rows = _query(client, sql, ids)
            except Exception as exc:  # table missing (no migrations yet) or schema drift: degrade
                text = str(exc)
                if "UNKNOWN_TABLE" in text or "Unknown table" in text:
                    text = "table missing: the schema is created by `nudge sink` on its first start"
                report.unavailable[f"clickhouse.{name}"] = text.splitlines()[0][:200]
                continue
            for row in rows:
                for key in ("payload", "properties"):
                    if isinstance(row.get(key), str):
                        with contextlib.suppress(orjson.JSONDecodeError):
                            row[key] = orjson.loads(row[key])
            setattr(report, name, list(reversed(rows)) if name != "updates" else rows)
        try:
            from engine.clickhouse.journeys import lead_journeys

            report.journeys = [status.to_json() for status in lead_journeys(client, ids)]
        except Exception as exc:  # table missing or schema drift, as above
            report.unavailable["clickhouse.journeys"] = str(exc).splitlines()[0][:200]
        try:
            merged = [a for lead in ids for a in lead_actions(client, lead, RECENT)]
            merged.sort(key=lambda a: (a.steps[0].at_ms, a.action_id))
            report.actions = [a.to_json() for a in merged[-RECENT:]]
        except Exception as exc:  # table missing or schema drift, as above
            text = str(exc)
            if "UNKNOWN_TABLE" in text or "Unknown table" in text:
                text = "table missing: the schema is created by `nudge sink` on its first start"
            report.unavailable["clickhouse.actions"] = text.splitlines()[0][:200]
    finally:
        client.close()


def gather(settings: Settings, lead_id: str, *, clickhouse: bool = True) -> LeadReport:
    report = LeadReport(lead_id)
    asyncio.run(_from_redis(settings, report))
    if clickhouse:
        _from_clickhouse(settings, report)
    else:
        report.unavailable["clickhouse"] = "skipped (--no-clickhouse)"
    return report


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, int | str) and str(value).isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _row(when: str, *cells: Any) -> str:
    return f"  {when}  " + " ".join(str(c) for c in cells if c)


def _action_line(action: dict[str, Any]) -> str:
    """`  <fired at>  <rule> <connector> <outcome>: <reason>  (path: deferred quiet_hours → suppressed converted)`;
    the path when the action went through more than one delivery step."""
    outcome = action["outcome"] + (f": {action['reason']}" if action.get("reason") else "")
    delivery = [s for s in action.get("steps", []) if s["step"] != "fired"]
    path = ""
    if len(delivery) > 1:
        path = "  (" + " → ".join(f"{s['step']} {s['reason']}".rstrip() for s in delivery) + ")"
    when = _when(action["fired_at_ms"]) if action.get("fired_at_ms") is not None else "(fire time unknown)"
    rule = action["rule"] + (f"/{action['journey_step']}" if action.get("journey_step") else "")
    return f"  {when}  {rule:<24} {action['connector']:<8} {outcome}{path}".rstrip()


def _journey_line(j: dict[str, Any]) -> str:
    """`  winback   at offer_wait since <time> (entered <time>)`, or `completed at stop <time>`, or
    `exited at w1 <time> (exit_on)`; `goal met <time>` when the journey's goal matched for that entry."""
    entered = f"entered {_when(j['entry_ms'])}" + (f", entry {j['entries']}" if j.get("entries", 1) > 1 else "")
    if j["status"] == "in":
        where = f"at {j['step'] or '-'} since {_when(j['since_ms'])}"
    else:
        reason = f" ({j['reason']})" if j.get("reason") else ""
        where = f"{j['status']} at {j['step'] or '-'} {_when(j['since_ms'])}{reason}"
    goal = f", goal met {_when(j['goal_ms'])}" if j.get("goal_ms") is not None else ""
    return f"  {j['journey']:<24} {where} ({entered}{goal})"


def render(report: LeadReport) -> str:
    lines = [f"Lead {report.lead_id}" + (f" (merged: {', '.join(report.merged_ids)})" if report.merged_ids else "")]
    lines.append(f"  stage: {report.latest('stage') or '-'}    score: {report.latest('score') or '-'}")
    lines.append("Profile (traits):")
    lines += [f"  {k}: {v}" for k, v in sorted(report.profile.items())] or ["  -"]
    lines.append("Owner:")
    if report.owner:
        o = report.owner
        acked = f"acked {_when(o['acked_at_ms'])}" if o.get("acked_at_ms") else "not acknowledged"
        deadline = f", SLA deadline {_when(o['sla_deadline_ms'])}" if o.get("sla_deadline_ms") else ""
        lines.append(
            f"  {o['rep']} (by {o.get('strategy')}, since {_when(o.get('assigned_at_ms'))}, {acked}"
            f"{deadline}, "
            f"reassigned {o.get('reassignments', 0)}x)"
        )
    else:
        lines.append("  - (not assigned)")
    lines.append("Assignment history:")
    lines += [
        _row(_when(h.get("at_ms")), f"{h.get('event'):<12}", h.get("rep"), h.get("reason"))
        for h in report.assignment_history
    ] or ["  -"]
    lines.append("Score history:")
    lines += [f"  {_when(at)}  {score}" for at, score in report.score_history()] or ["  -"]
    lines.append("Lifecycle updates:")
    lines += [
        f"  {_when(u['at'])}  {u['kind']:<16} {u.get('rep') or ''}".rstrip() for u in report.updates
    ] or ["  -"]
    lines.append("Journeys (where the lead is, or how it left):")
    lines += [_journey_line(j) for j in report.journeys] or ["  -"]
    lines.append(f"Recent events (last {RECENT}):")
    lines += [f"  {_when(e['at'])}  {e['type']:<8} {e['name']}" for e in report.events] or ["  -"]
    lines.append(f"Actions (last {RECENT}; outcome and why):")
    lines += [_action_line(a) for a in report.actions] or ["  -"]
    for source, why in report.unavailable.items():
        lines.append(f"(not shown: {source}: {why})")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("leads", help="inspect leads")
    actions = parser.add_subparsers(dest="leads_action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="profile, traits, score, stage, owner, recent events, actions and their outcomes"
    )
    show.add_argument("lead_id", metavar="LEAD_ID")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.add_argument("--no-clickhouse", action="store_true", help="read Redis only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sources, each optional (a missing or unreachable one is reported as such, never fatal):
    - Redis: the collector's profile hash `nudge:profile:{lead}` (traits) and the assignment state (owner, SLA,
      assignment history) from `engine.assignment`.
    - ClickHouse (`NUDGE_CLICKHOUSE_DSN`): recent events (`events`), the recent actions with their outcome and
      its reason (`actions`: sent, or suppressed / failed and why, or still deferred; every step in `--json`),
      stage and score changes and other lifecycle updates (`lead_updates`), and per journey where the lead is
      (the step it waits at, since when) or how it left, folded from its journey records
      (`engine.clickhouse.journeys.lead_journeys`). An embedded chDB store owned by a
      running `nudge sink` cannot be opened by a second process; the command says so and shows the rest.
    Score and stage are the newest values found in the lead updates (then the profile). Exit codes: 0 shown, 1 the
    lead is unknown everywhere that could be read.
    """
    report = gather(Settings.from_env(), args.lead_id, clickhouse=not args.no_clickhouse)
    if args.json:
        doc = {**report.__dict__, "stage": report.latest("stage"), "score": report.latest("score")}
        print(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(report))
    if not report.known:
        print(f"nudge leads: nothing known about lead {args.lead_id!r} in the stores that could be read")
        return 1
    return 0
