"""Kafka records → ClickHouse rows, one pure function per topic (each builds a column → value dict, so a row reads
like the schema). No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine.core.experiments import money
from engine.core.model import Action
from engine.events import InvalidEvent, parse_event
from engine.kafka import topics

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
        "experiment",
        "variant",
        "held_out",
        "action",
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "journey_step",
        "rules_version",
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

    kind: str  # one of engine.kafka.topics.ALL_TOPICS (without the prefix)
    partition: int
    offset: int
    timestamp_ms: int  # Kafka record timestamp (producer wall clock)
    key: bytes | None
    value: bytes | None


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def revenue_of(properties: dict[str, Any]) -> float | None:
    """Segment ecommerce: `revenue` on Order Completed, else `total`."""
    revenue = money(properties.get("revenue"))
    return revenue if revenue is not None else money(properties.get("total"))


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


def event_row(record: Record) -> dict[str, Any]:
    if record.value is None:
        raise UnstorableRecord("empty")
    try:
        event = parse_event(record.value)
    except InvalidEvent as exc:
        raise UnstorableRecord(f"invalid_event_{exc.reason}") from None
    return {
        "message_id": event.message_id,
        "lead_id": event.lead_id,
        "type": event.type,
        "name": event.name or "",
        "timestamp": event.timestamp_ms,
        "received_at": event.received_at_ms,
        "user_id": event.user_id or "",
        "anonymous_id": event.anonymous_id or "",
        "previous_id": event.previous_id or "",
        "revenue": revenue_of(event.properties),
        "properties": _json(event.properties),
        "traits": _json(event.traits),
        "context": _json(event.context),
        "raw": record.value.decode("utf-8", "replace"),
    }


def fired_row(record: Record) -> dict[str, Any]:
    doc = _load(record)
    action = Action.from_json(doc)
    return {
        "action_id": action.action_id,
        "step": "fired",
        "attempt": 0,
        "at": action.fired_at_ms,  # event time: the core's fire time
        "rule": action.rule,
        "rule_version": action.rule_version,
        "lead_id": action.lead_id,
        "connector": action.connector,
        "trigger": list(action.trigger),
        "trigger_time": action.trigger_time_ms,
        "fired_at": action.fired_at_ms,
        "emitted_at": record.timestamp_ms,  # wall clock: when the worker produced it
        "explanation": action.explanation,
        "reason": "",
        "latency_ms": None,
        "next_attempt_at": None,
        "priority": action.priority,
        "marketing": action.marketing,
        "rep": rep_of(action.context),
        "experiment": action.experiment or "",
        "variant": action.variant or "",
        "held_out": action.held_out,
        "action": _json(action.to_json()),
        "kafka_topic": topics.ACTIONS,
        "journey_step": action.step or "",
        "rules_version": str(doc.get("rules_version") or ""),  # stamped by the worker (engine.worker.lead_worker)
    }


def delivery_row(record: Record) -> dict[str, Any]:
    doc = _load(record)
    latency = doc.get("latency_ms")
    return {
        "action_id": str(doc["action_id"]),
        "step": str(doc["outcome"]),
        "attempt": int(doc.get("attempt") or 1),
        "at": int(doc["at_ms"]),  # wall clock of the dispatcher
        "rule": str(doc["rule"]),
        "rule_version": str(doc.get("rule_version") or ""),
        "lead_id": str(doc["lead_id"]),
        "connector": str(doc["connector"]),
        "trigger": [],
        "trigger_time": None,
        "fired_at": _int_or_none(doc.get("fired_at_ms")),
        "emitted_at": None,
        "explanation": "",
        "reason": str(doc.get("reason") or ""),
        "latency_ms": None if latency is None else max(0, int(latency)),
        "next_attempt_at": _int_or_none(doc.get("next_attempt_ms")),
        "priority": 0,
        "marketing": False,
        "rep": "",
        "experiment": str(doc.get("experiment") or ""),
        "variant": str(doc.get("variant") or ""),
        "held_out": bool(doc.get("held_out")),
        "action": "",
        "kafka_topic": topics.DELIVERIES,
        "journey_step": "",  # on the fired row; KPIs join deliveries to it by action_id
        "rules_version": "",  # on the fired row too
    }


def dead_letter_row(record: Record) -> dict[str, Any]:
    doc = _load(record)
    return {
        "at": int(doc.get("at_ms") or record.timestamp_ms),
        "source": str(doc.get("source") or ""),
        "reason": str(doc.get("reason") or ""),
        "detail": str(doc.get("detail") or ""),
        "payload": str(doc.get("payload") or ""),
        "payload_encoding": str(doc.get("payload_encoding") or ""),
        "original_topic": str(doc.get("topic") or ""),
        "original_partition": _int_or_none(doc.get("partition")),
        "original_offset": _int_or_none(doc.get("offset")),
        "original_key": str(doc.get("key") or ""),
    }


def lead_update_row(record: Record) -> dict[str, Any]:
    doc = _load(record)
    lead_id = doc.get("lead_id") or (record.key.decode("utf-8", "replace") if record.key else "")
    if not lead_id:
        raise UnstorableRecord("missing_lead_id")
    return {
        "lead_id": str(lead_id),
        "at": int(doc.get("at_ms") or doc.get("timestamp_ms") or record.timestamp_ms),
        "kind": str(doc.get("kind") or doc.get("type") or "update"),
        "rep": rep_of(doc),
        "payload": _json(doc),
    }


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


_CONVERTERS = {
    topics.CLICKSTREAM: event_row,
    topics.ACTIONS: fired_row,
    topics.DELIVERIES: delivery_row,
    topics.DEAD_LETTERS: dead_letter_row,
    topics.LEAD_UPDATES: lead_update_row,
}


def to_row(record: Record) -> tuple[str, list[Any]]:
    """(table, values in `COLUMNS[table]` order), or `UnstorableRecord(reason)` for a record the sink cannot
    store, never anything else, whatever the bytes (the reason is a stable code for a metric label). Invalid
    clickstream events are the worker's business (it dead-letters them); the sink only skips and counts them.

    - `clickstream` → `events`: normalised Segment fields + the raw JSON; `revenue` = properties.revenue, else
      .total.
    - `actions` → `actions` row with step `fired`: `at` = `fired_at` (event time), `emitted_at` = the Kafka
      record timestamp (wall clock when the worker emitted it), `journey_step` = the action's journey step
      (`Action.step`, '' outside journeys), `rules_version` = the rule-set version the worker stamped on it.
    - `deliveries` → `actions` row with step = the outcome (sent, retried, failed, suppressed, deferred,
      duplicate, held_out), `at` = when the dispatcher recorded it (wall clock).
    - Both kinds of `actions` rows of an action in an experiment carry its `experiment`, `variant` (the arm) and
      `held_out` ('' / '' / false outside experiments).
    - `dead-letters` → `dead_letters`; `lead-updates` → `lead_updates` (stored generically: kind + JSON payload).
    """
    converter = _CONVERTERS.get(record.kind)
    if converter is None:
        raise UnstorableRecord("unknown_topic")
    try:
        values = converter(record)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, UnstorableRecord):
            raise
        raise UnstorableRecord(f"bad_{record.kind.replace('-', '_')}") from None
    values["kafka_partition"] = record.partition
    values["kafka_offset"] = record.offset
    table = TOPIC_TABLES[record.kind]
    return table, [values[column] for column in COLUMNS[table]]
