"""Kafka records → ClickHouse rows, one pure function per topic. No I/O.

Contract: `to_row(kind, record)` returns `(table, row)` with the row's values in `COLUMNS[table]` order, or
raises `UnstorableRecord(reason)` for a record the sink cannot store (the reason is a stable code for a
metric label). Invalid clickstream events are the worker's business (it dead-letters them); the sink only
skips and counts them.

Row mapping:
- `clickstream` → `events`: normalised Segment fields + the raw JSON; `revenue` = properties.revenue, else
  .total.
- `actions` → `actions` row with step `fired`: `at` = `fired_at` (event time), `emitted_at` = the Kafka
  record timestamp (wall clock when the worker emitted it; detection delay = emitted_at - trigger_time).
- `deliveries` → `actions` row with step = the outcome (sent, retried, failed, suppressed, deferred,
  duplicate), `at` = when the dispatcher recorded it (wall clock).
- `dead-letters` → `dead_letters`; `lead-updates` → `lead_updates` (stored generically: kind + JSON
  payload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine import topics
from engine.core.model import Action
from engine.events import InvalidEvent, parse_event

COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (
        "message_id",
        "lead_id",
        "type",
        "name",
        "timestamp",
        "received_at",
        "user_id",
        "anonymous_id",
        "previous_id",
        "revenue",
        "properties",
        "traits",
        "context",
        "raw",
        "kafka_partition",
        "kafka_offset",
    ),
    "actions": (
        "action_id",
        "step",
        "attempt",
        "at",
        "rule",
        "rule_version",
        "lead_id",
        "connector",
        "trigger",
        "trigger_time",
        "fired_at",
        "emitted_at",
        "explanation",
        "reason",
        "latency_ms",
        "next_attempt_at",
        "priority",
        "marketing",
        "rep",
        "action",
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
    ),
    "dead_letters": (
        "at",
        "source",
        "reason",
        "detail",
        "payload",
        "payload_encoding",
        "original_topic",
        "original_partition",
        "original_offset",
        "original_key",
        "kafka_partition",
        "kafka_offset",
    ),
    "lead_updates": ("lead_id", "at", "kind", "rep", "payload", "kafka_partition", "kafka_offset"),
}

TOPIC_TABLES = {
    topics.CLICKSTREAM: "events",
    topics.ACTIONS: "actions",
    topics.DELIVERIES: "actions",
    topics.DEAD_LETTERS: "dead_letters",
    topics.LEAD_UPDATES: "lead_updates",
}


class UnstorableRecord(ValueError):
    """A record the sink skips; `reason` is a stable code (metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Record:
    """What the sink needs of one Kafka record: which logical topic, where it came from, and its bytes."""

    kind: str  # one of engine.topics.ALL_TOPICS (without the prefix)
    partition: int
    offset: int
    timestamp_ms: int  # Kafka record timestamp (producer wall clock)
    key: bytes | None
    value: bytes | None


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def revenue_of(properties: dict[str, Any]) -> float | None:
    """Segment ecommerce: `revenue` on Order Completed, else `total`."""
    revenue = _number(properties.get("revenue"))
    return revenue if revenue is not None else _number(properties.get("total"))


def rep_of(context: dict[str, Any]) -> str:
    """The rep who owns a lead, from an action's context: `owner` or `rep`, an id or an object with one."""
    for key in ("owner", "rep"):
        value = context.get(key)
        if isinstance(value, dict):
            value = value.get("id") or value.get("name") or value.get("email")
        if value:
            return str(value)
    return ""


def _load(record: Record) -> dict[str, Any]:
    if record.value is None:
        raise UnstorableRecord("empty")
    try:
        doc = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        raise UnstorableRecord("not_json") from None
    if not isinstance(doc, dict):
        raise UnstorableRecord("not_object")
    return doc


def event_row(record: Record) -> list[Any]:
    if record.value is None:
        raise UnstorableRecord("empty")
    try:
        event = parse_event(record.value)
    except InvalidEvent as exc:
        raise UnstorableRecord(f"invalid_event_{exc.reason}") from None
    return [
        event.message_id,
        event.lead_id,
        event.type,
        event.name or "",
        event.timestamp_ms,
        event.received_at_ms,
        event.user_id or "",
        event.anonymous_id or "",
        event.previous_id or "",
        revenue_of(event.properties),
        _json(event.properties),
        _json(event.traits),
        _json(event.context),
        record.value.decode("utf-8", "replace"),
        record.partition,
        record.offset,
    ]


def fired_row(record: Record) -> list[Any]:
    doc = _load(record)
    try:
        action = Action.from_json(doc)
    except (KeyError, TypeError, ValueError):
        raise UnstorableRecord("bad_action") from None
    return [
        action.action_id,
        "fired",
        0,
        action.fired_at_ms,
        action.rule,
        action.rule_version,
        action.lead_id,
        action.connector,
        list(action.trigger),
        action.trigger_time_ms,
        action.fired_at_ms,
        record.timestamp_ms,
        action.explanation,
        "",
        None,
        None,
        action.priority,
        action.marketing,
        rep_of(action.context),
        _json(action.to_json()),
        topics.ACTIONS,
        record.partition,
        record.offset,
    ]


def delivery_row(record: Record) -> list[Any]:
    doc = _load(record)
    try:
        latency = doc.get("latency_ms")
        return [
            str(doc["action_id"]),
            str(doc["outcome"]),
            int(doc.get("attempt") or 1),
            int(doc["at_ms"]),
            str(doc["rule"]),
            str(doc.get("rule_version") or ""),
            str(doc["lead_id"]),
            str(doc["connector"]),
            [],
            None,
            doc.get("fired_at_ms"),
            None,
            "",
            str(doc.get("reason") or ""),
            None if latency is None else max(0, int(latency)),
            doc.get("next_attempt_ms"),
            0,
            False,
            "",
            "",
            topics.DELIVERIES,
            record.partition,
            record.offset,
        ]
    except (KeyError, TypeError, ValueError):
        raise UnstorableRecord("bad_delivery") from None


def dead_letter_row(record: Record) -> list[Any]:
    doc = _load(record)
    return [
        int(doc.get("at_ms") or record.timestamp_ms),
        str(doc.get("source") or ""),
        str(doc.get("reason") or ""),
        str(doc.get("detail") or ""),
        str(doc.get("payload") or ""),
        str(doc.get("payload_encoding") or ""),
        str(doc.get("topic") or ""),
        doc.get("partition"),
        doc.get("offset"),
        str(doc.get("key") or ""),
        record.partition,
        record.offset,
    ]


def lead_update_row(record: Record) -> list[Any]:
    doc = _load(record)
    lead_id = doc.get("lead_id") or (record.key.decode("utf-8", "replace") if record.key else "")
    if not lead_id:
        raise UnstorableRecord("missing_lead_id")
    at_ms = doc.get("at_ms") or doc.get("timestamp_ms") or record.timestamp_ms
    kind = doc.get("kind") or doc.get("type") or "update"
    return [str(lead_id), int(at_ms), str(kind), rep_of(doc), _json(doc), record.partition, record.offset]


_CONVERTERS = {
    topics.CLICKSTREAM: event_row,
    topics.ACTIONS: fired_row,
    topics.DELIVERIES: delivery_row,
    topics.DEAD_LETTERS: dead_letter_row,
    topics.LEAD_UPDATES: lead_update_row,
}


def to_row(record: Record) -> tuple[str, list[Any]]:
    converter = _CONVERTERS.get(record.kind)
    if converter is None:
        raise UnstorableRecord("unknown_topic")
    return TOPIC_TABLES[record.kind], converter(record)
