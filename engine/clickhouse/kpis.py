"""KPI queries over the Nudge store. Each function takes a client and a half-open window `[since_ms, until_ms)` in
UTC epoch milliseconds and returns plain Python values. Read-only; every query reads `FINAL`, so rows the sink
wrote twice (a crash between insert and commit) are counted once."""

from __future__ import annotations

import re
import time
from typing import Any

from clickhouse_connect.driver.client import Client

from engine.clickhouse import experiments
from engine.clickhouse.merged_history import MERGES_SQL, person_sql

FUNNEL_STEPS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
ATTRIBUTION_WINDOW_MS = 7 * 24 * 3600 * 1000  # `nudge report --attribution`'s default
FUNNEL_WINDOW_MS = 7 * 24 * 3600 * 1000
TOUCH_KINDS = ("ack", "acknowledged", "touched", "contacted", "first_touch")

_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_duration(text: str, option: str = "--since") -> int:
    """`30m`, `24h`, `7d`, `2w` → milliseconds; raises ValueError with a usable message naming `option`."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise ValueError(f"{option} {text!r} is not a duration; use e.g. 30m, 24h, 7d or 2w")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_since(text: str) -> int:
    """`--since`: `30m`, `24h`, `7d`, `2w` → milliseconds; raises ValueError with a usable message."""
    return parse_duration(text, "--since")


def window(since: str, now_ms: int | None = None) -> tuple[int, int]:
    """`(since_ms, until_ms)` of the window of length `since` (e.g. "7d") ending at `now_ms` (default now)."""
    until_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    return until_ms - parse_since(since), until_ms


def _ms(column: str) -> str:
    return f"toInt64(toUnixTimestamp64Milli({column}))"


def _in_window(column: str) -> str:
    return f"{_ms(column)} >= %(since)s AND {_ms(column)} < %(until)s"


def _rows(client: Client, sql: str, since_ms: int, until_ms: int, **params: Any) -> list[tuple[Any, ...]]:
    return list(client.query(sql, parameters={"since": since_ms, "until": until_ms, **params}).result_rows)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


# One person, one lead: an anonymous id merged into a user (identify, alias) counts as that user
# (engine/clickhouse/merged_history.py). Used as `FROM events AS e FINAL {MERGED}` with `{PERSON}` for the lead.
MERGED = f"LEFT JOIN ({MERGES_SQL}) AS m ON m.from_id = e.lead_id"
PERSON = person_sql("e.lead_id")


def funnel(
    client: Client, since_ms: int, until_ms: int, window_ms: int = FUNNEL_WINDOW_MS
) -> list[dict[str, Any]]:
    """Distinct leads that did Product Viewed → Product Added → Checkout Started → Order Completed in that order
    (ClickHouse `windowFunnel`, default window 7 days), by event time inside the window."""
    conditions = ", ".join(f"name = '{step}'" for step in FUNNEL_STEPS)
    sql = f"""
        SELECT level, count() FROM (
            SELECT {PERSON} AS person, windowFunnel(%(w)s)(toUInt64({_ms("timestamp")}), {conditions}) AS level
            FROM events AS e FINAL {MERGED}
            WHERE type = 'track' AND {_in_window("timestamp")}
            GROUP BY person
        ) GROUP BY level"""
    by_level = {int(level): int(n) for level, n in _rows(client, sql, since_ms, until_ms, w=window_ms)}
    out: list[dict[str, Any]] = []
    previous: int | None = None
    for i, step in enumerate(FUNNEL_STEPS, start=1):
        leads = sum(n for level, n in by_level.items() if level >= i)
        out.append(
            {
                "step": step,
                "leads": leads,
                "from_previous": None if previous is None else _ratio(leads, previous),
            }
        )
        previous = leads
    return out


def abandonment(client: Client, since_ms: int, until_ms: int) -> dict[str, Any]:
    """Of the leads with a Product Added in the window, those with no Order Completed at or after their last
    Product Added."""
    sql = f"""
        SELECT countIf(last_add > 0), countIf(last_add > 0 AND last_order < last_add) FROM (
            SELECT {PERSON} AS person,
                   maxIf({_ms("timestamp")}, name = 'Product Added') AS last_add,
                   maxIf({_ms("timestamp")}, name = 'Order Completed') AS last_order
            FROM events AS e FINAL {MERGED}
            WHERE type = 'track' AND {_in_window("timestamp")}
            GROUP BY person
        )"""
    carts, abandoned = _rows(client, sql, since_ms, until_ms)[0]
    return {"carts": int(carts), "abandoned": int(abandoned), "rate": _ratio(abandoned, carts)}


def nudges_per_rule(client: Client, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Distinct action ids per rule and lifecycle step (fired, sent, failed, suppressed, ...)."""
    sql = f"""
        SELECT rule, step, uniqExact(action_id) FROM actions FINAL
        WHERE {_in_window("at")} GROUP BY rule, step ORDER BY rule, step"""
    per_rule: dict[str, dict[str, Any]] = {}
    for rule, step, n in _rows(client, sql, since_ms, until_ms):
        per_rule.setdefault(rule, {"rule": rule})[step] = int(n)
    return [per_rule[rule] for rule in sorted(per_rule)]


def recovered(
    client: Client, since_ms: int, until_ms: int, attribution_ms: int = ATTRIBUTION_WINDOW_MS
) -> dict[str, Any]:
    """Recovered orders and revenue, last touch: an order (`Order Completed`, event time in the window) counts when
    a *marketing* nudge to the same lead was actually `sent` before it, at most `attribution_ms` before it; it is
    credited once, to the latest such nudge's rule. The send time is the action's first `sent` outcome (the
    dispatcher's clock), not its fire time: a nudge that fired and was then suppressed (converted, unsubscribed,
    expired, ...) or failed never earns anything, nor does an order placed while the nudge was still held (quiet
    hours, caps). Revenue = `properties.revenue`, else `properties.total`."""
    sql = f"""
        SELECT rule, count(), sum(revenue) FROM (
            SELECT o.message_id, any(o.revenue) AS revenue, argMax(n.rule, n.t) AS rule
            FROM (
                SELECT lead_id, message_id, {_ms("timestamp")} AS t, ifNull(revenue, 0) AS revenue
                FROM events FINAL
                WHERE type = 'track' AND name = 'Order Completed' AND {_in_window("timestamp")}
            ) AS o
            INNER JOIN (
                SELECT s.lead_id AS lead_id, f.rule AS rule, s.t AS t
                FROM (
                    SELECT action_id, any(lead_id) AS lead_id, min({_ms("at")}) AS t FROM actions FINAL
                    WHERE step = 'sent' AND {_ms("at")} < %(until)s AND {_ms("at")} >= %(since)s - %(attribution)s
                    GROUP BY action_id
                ) AS s
                INNER JOIN (
                    SELECT action_id, any(rule) AS rule FROM actions FINAL
                    WHERE step = 'fired' AND marketing GROUP BY action_id
                ) AS f ON s.action_id = f.action_id
            ) AS n ON o.lead_id = n.lead_id
            WHERE o.t > n.t AND o.t <= n.t + %(attribution)s
            GROUP BY o.message_id
        ) GROUP BY rule ORDER BY rule"""
    rows = _rows(client, sql, since_ms, until_ms, attribution=attribution_ms)
    by_rule = [{"rule": r, "orders": int(n), "revenue": round(float(rev), 2)} for r, n, rev in rows]
    return {
        "orders": sum(r["orders"] for r in by_rule),
        "revenue": round(sum(r["revenue"] for r in by_rule), 2),
        "by_rule": by_rule,
        "attribution": {"window_ms": attribution_ms, "model": "last_touch", "counts": "sent"},
    }


def not_sent(client: Client, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Actions whose final outcome in the window was `suppressed` or `failed`, per rule, outcome and reason
    (suppressed: expired, converted, unsubscribed, consent_withdrawn, quiet_hours_drop, ...; failed:
    retries_exhausted, a permanent peer answer, ...), distinct action ids, most first. An action sent in the end
    is not counted, whatever happened to it on the way."""
    sql = f"""
        SELECT final_rule, final_step, final_reason, uniqExact(action_id) AS n FROM (
            SELECT action_id, any(rule) AS final_rule, argMax(step, at) AS final_step,
                   argMax(reason, at) AS final_reason, countIf(step = 'sent') AS sent
            FROM actions FINAL
            WHERE step IN ('sent', 'suppressed', 'failed') AND {_in_window("at")}
            GROUP BY action_id
        ) WHERE sent = 0
        GROUP BY final_rule, final_step, final_reason ORDER BY n DESC, final_rule, final_step, final_reason"""
    return [
        {"rule": rule, "outcome": step, "reason": reason, "actions": int(n)}
        for rule, step, reason, n in _rows(client, sql, since_ms, until_ms)
    ]


def _quantiles(rows: list[tuple[Any, ...]], key: str) -> list[dict[str, Any]]:
    return [{key: k, "count": int(n), "p50_ms": int(p50), "p95_ms": int(p95)} for k, n, p50, p95 in rows if n]


def detection_delay(client: Client, since_ms: int, until_ms: int) -> dict[str, Any]:
    """Wall clock the worker emitted the action (Kafka record time) minus the later of the triggering event's
    time and the rule's fire time (a deadline for abandonment rules), per rule, p50/p95 (`quantileExact`)."""
    inner = f"""
        SELECT rule, {_ms("emitted_at")} - greatest({_ms("fired_at")}, ifNull({_ms("trigger_time")}, 0)) AS d
        FROM actions FINAL
        WHERE step = 'fired' AND emitted_at IS NOT NULL AND fired_at IS NOT NULL AND {_in_window("at")}"""
    per_rule = _rows(
        client,
        f"SELECT rule, count(), quantileExact(0.5)(d), quantileExact(0.95)(d) FROM ({inner}) GROUP BY rule "
        "ORDER BY rule",
        since_ms,
        until_ms,
    )
    total = _rows(
        client,
        f"SELECT 'all', count(), quantileExact(0.5)(d), quantileExact(0.95)(d) FROM ({inner})",
        since_ms,
        until_ms,
    )
    overall = _quantiles(total, "rule")
    return {"overall": overall[0] if overall else None, "by_rule": _quantiles(per_rule, "rule")}


def delivery_delay(client: Client, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """First `sent` outcome minus the fired action's emit time, per connector, p50/p95."""
    sql = f"""
        SELECT connector, count(), quantileExact(0.5)(d), quantileExact(0.95)(d) FROM (
            SELECT s.connector AS connector, s.t - f.t AS d
            FROM (
                SELECT action_id, any(connector) AS connector, min({_ms("at")}) AS t FROM actions FINAL
                WHERE step = 'sent' AND {_in_window("at")} GROUP BY action_id
            ) AS s
            INNER JOIN (
                SELECT action_id, min({_ms("emitted_at")}) AS t FROM actions FINAL
                WHERE step = 'fired' AND emitted_at IS NOT NULL GROUP BY action_id
            ) AS f ON s.action_id = f.action_id
        ) GROUP BY connector ORDER BY connector"""
    return _quantiles(_rows(client, sql, since_ms, until_ms), "connector")


def hot_leads(client: Client, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Leads with a fired non-marketing action (a sales alert), by the rep in the first alert's context
    (`owner`/`rep`), else the lead's latest owner from `assigned`/`reassigned` lead updates; time to first touch
    = the first lead update of a touch kind (ack, contacted, ...) or the `acked_at_ms` of an assignment record,
    minus the first alert."""
    kinds = ", ".join(f"'{k}'" for k in TOUCH_KINDS)
    acked = "JSONExtractInt(payload, 'acked_at_ms')"
    sql = f"""
        SELECT rep, count() AS leads, countIf(touch >= alert) AS touched,
               quantileExactIf(0.5)(touch - alert, touch >= alert) AS p50
        FROM (
            SELECT a.lead_id AS lead_id, if(a.rep != '', a.rep, ifNull(o.owner, '')) AS rep, a.alert AS alert,
                   ifNull(t.touch, -1) AS touch
            FROM (
                SELECT lead_id, argMin(rep, at) AS rep, min({_ms("at")}) AS alert FROM actions FINAL
                WHERE step = 'fired' AND NOT marketing AND {_in_window("at")} GROUP BY lead_id
            ) AS a
            LEFT JOIN (
                SELECT lead_id, argMax(rep, at) AS owner FROM lead_updates FINAL
                WHERE kind IN ('assigned', 'reassigned') AND rep != '' GROUP BY lead_id
            ) AS o ON a.lead_id = o.lead_id
            LEFT JOIN (
                SELECT lead_id, min(if(kind IN ({kinds}), {_ms("at")}, {acked})) AS touch
                FROM lead_updates FINAL WHERE kind IN ({kinds}) OR {acked} > 0 GROUP BY lead_id
            ) AS t ON a.lead_id = t.lead_id
        ) GROUP BY rep ORDER BY leads DESC, rep
        SETTINGS join_use_nulls = 1"""
    return [
        {
            "rep": rep or "(unassigned)",
            "hot_leads": int(leads),
            "touched": int(touched),
            "time_to_first_touch_p50_ms": int(p50) if touched else None,
        }
        for rep, leads, touched, p50 in _rows(client, sql, since_ms, until_ms)
    ]


def report(
    client: Client, since_ms: int, until_ms: int, attribution_ms: int = ATTRIBUTION_WINDOW_MS
) -> dict[str, Any]:
    """Every KPI for one window, as one JSON-serialisable dict (what `nudge report --json` prints).
    `incremental_revenue`: the experiments' measured incremental revenue (people assigned in the window; None
    without an experiment with a holdout and enough data), which `nudge report` shows before attributed revenue."""
    return {
        "window": {"since_ms": since_ms, "until_ms": until_ms},
        "incremental_revenue": experiments.report(client, since_ms, until_ms)["incremental_revenue"],
        "funnel": funnel(client, since_ms, until_ms),
        "abandonment": abandonment(client, since_ms, until_ms),
        "nudges": nudges_per_rule(client, since_ms, until_ms),
        "not_sent": not_sent(client, since_ms, until_ms),
        "recovered": recovered(client, since_ms, until_ms, attribution_ms),
        "detection_delay": detection_delay(client, since_ms, until_ms),
        "delivery_delay": delivery_delay(client, since_ms, until_ms),
        "hot_leads": hot_leads(client, since_ms, until_ms),
    }


def summary(client: Client) -> dict[str, Any]:
    """All-time summary for the demo's closing screen: volumes, actions per rule, median detection delay."""
    events, leads = client.query("SELECT count(), uniqExact(lead_id) FROM events FINAL").result_rows[0]
    per_rule = client.query(
        "SELECT rule, uniqExact(action_id) FROM actions FINAL WHERE step = 'fired' "
        "GROUP BY rule ORDER BY rule"
    ).result_rows
    outcomes = client.query(
        "SELECT step, uniqExact(action_id) FROM actions FINAL WHERE step != 'fired' "
        "GROUP BY step ORDER BY step"
    ).result_rows
    dead = client.query("SELECT count() FROM dead_letters FINAL").result_rows[0][0]
    delay = detection_delay(client, 0, 2**62)["overall"]
    return {
        "events": int(events),
        "leads": int(leads),
        "actions_fired": sum(int(n) for _, n in per_rule),
        "actions_by_rule": {rule: int(n) for rule, n in per_rule},
        "outcomes": {step: int(n) for step, n in outcomes},
        "dead_letters": int(dead),
        "detection_delay_p50_ms": delay["p50_ms"] if delay else None,
    }
