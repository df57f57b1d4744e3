"""One person, one history: the stored rows of every id merged into a lead (its anonymous ids and aliases, read from
the stored identify and alias events), for `nudge leads show` and `nudge privacy export`, and the mapping that lets
KPI queries count a merged lead once. Read-only; rows read with `FINAL`."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from engine.clickhouse.erasure import expand_ids, needles

# A subquery of (from_id, to_id): every id an identify or alias merged into another, mapped to the id it was merged
# into (the latest merge wins, as at the collector). KPI queries join it to count a person once:
#   SELECT ifNull(m.to_id, e.lead_id) AS person ... FROM events e LEFT JOIN (MERGES_SQL) m ON m.from_id = e.lead_id
MERGES_SQL = (
    "SELECT from_id, argMax(to_id, timestamp) AS to_id FROM ("
    " SELECT if(type = 'alias', previous_id, anonymous_id) AS from_id, user_id AS to_id, timestamp FROM events"
    " WHERE type IN ('identify', 'alias') AND user_id != '' AND from_id != '' AND from_id != user_id"
    ") GROUP BY from_id"
)


def person_sql(column: str = "lead_id") -> str:
    """An expression for the merged person of the lead id in `column`, for queries that join `MERGES_SQL` as `m`
    (`LEFT JOIN (MERGES_SQL) AS m ON m.from_id = <column>`): the id it was merged into, else itself."""
    return f"if(m.to_id = '', {column}, m.to_id)"


def merged_ids(client: Client, lead_id: str) -> list[str]:
    """`lead_id` first, then every id the stored events merged with it."""
    return expand_ids(client, [lead_id])


def _rows(client: Client, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    out = []
    for row in result.result_rows:
        doc = dict(zip(result.column_names, row, strict=True))
        for name in ("properties", "traits", "context", "payload", "action"):
            if isinstance(doc.get(name), str) and doc[name][:1] in ("{", "["):
                with contextlib.suppress(orjson.JSONDecodeError):
                    doc[name] = orjson.loads(doc[name])
        out.append(doc)
    return out


def events(client: Client, ids: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    """The events of every id, oldest first (with `limit`: the most recent `limit`, still oldest first)."""
    order = "DESC" if limit else "ASC"
    rows = _rows(
        client,
        "SELECT toUnixTimestamp64Milli(timestamp) AS at_ms, lead_id, message_id, type, name, user_id, anonymous_id,"
        " previous_id, properties, traits, context FROM events FINAL WHERE lead_id IN {ids:Array(String)}"
        f" ORDER BY timestamp {order}, message_id" + (f" LIMIT {int(limit)}" if limit else ""),
        {"ids": list(ids)},
    )
    return list(reversed(rows)) if limit else rows


def action_steps(client: Client, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every recorded step of the actions of every id (fired, deferred, suppressed, sent, ...), oldest first, with
    the explanation the worker gave when it fired."""
    return _rows(
        client,
        "SELECT action_id, step, attempt, toUnixTimestamp64Milli(at) AS at_ms, rule, rule_version, lead_id, connector,"
        " trigger, explanation, reason, priority, marketing, rep, action FROM actions FINAL"
        " WHERE lead_id IN {ids:Array(String)} ORDER BY at, action_id, step = 'fired' DESC, attempt",
        {"ids": list(ids)},
    )


def actions(client: Client, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The actions of every id, each with its steps, its outcome (the last step) and its explanation."""
    grouped: dict[str, dict[str, Any]] = {}
    for step in action_steps(client, ids):
        action = grouped.setdefault(
            step["action_id"],
            {"action_id": step["action_id"], "lead_id": step["lead_id"], "rule": step["rule"], "steps": []},
        )
        if step["step"] == "fired":
            action.update(
                connector=step["connector"],
                explanation=step["explanation"],
                trigger=list(step["trigger"]),
                marketing=bool(step["marketing"]),
                fired_at_ms=step["at_ms"],
                action=step["action"],
            )
        action["steps"].append(
            {"step": step["step"], "attempt": step["attempt"], "at_ms": step["at_ms"], "reason": step["reason"]}
        )
    for action in grouped.values():
        action["outcome"] = action["steps"][-1]["step"] if action["steps"] else "pending"
    return list(grouped.values())


def lead_updates(client: Client, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Stage changes, assignments, acknowledgements, consent and conversion records of every id, oldest first."""
    return _rows(
        client,
        "SELECT toUnixTimestamp64Milli(at) AS at_ms, lead_id, kind, rep, payload FROM lead_updates FINAL"
        " WHERE lead_id IN {ids:Array(String)} ORDER BY at, kafka_partition, kafka_offset",
        {"ids": list(ids)},
    )


def dead_letters(client: Client, ids: Sequence[str], terms: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rejected records that name the lead (key or raw bytes), oldest first."""
    return _rows(
        client,
        "SELECT toUnixTimestamp64Milli(at) AS at_ms, source, reason, detail, payload, payload_encoding, original_key"
        " FROM dead_letters FINAL WHERE original_key IN {ids:Array(String)}"
        " OR multiSearchAny(payload, {needles:Array(String)}) ORDER BY at",
        {"ids": list(ids), "needles": needles(ids, terms)[:200]},
    )
