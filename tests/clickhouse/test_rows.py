"""Record → row mapping: pure, no services."""

from __future__ import annotations

import orjson
import pytest

from engine.clickhouse.rows import COLUMNS, Record, UnstorableRecord, rep_of, revenue_of, to_row
from engine.core.model import Action
from engine.kafka import topics


def _rec(kind: str, value: bytes | None, key: bytes | None = None) -> Record:
    return Record(kind, 2, 41, 1_700_000_000_500, key, value)


def _as_dict(table: str, row: list) -> dict:
    assert len(row) == len(COLUMNS[table])
    return dict(zip(COLUMNS[table], row, strict=True))


def test_event_row_normalises_and_keeps_raw() -> None:
    raw = orjson.dumps(
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
         "timestamp": "2026-11-25T10:00:00.250+01:00", "properties": {"total": "19.5"}}
    )  # fmt: skip
    table, row = to_row(_rec(topics.CLICKSTREAM, raw))
    doc = _as_dict(table, row)
    assert table == "events"
    assert doc["timestamp"] == 1795597200250
    assert (doc["lead_id"], doc["name"], doc["revenue"], doc["raw"]) == (
        "u1",
        "Order Completed",
        19.5,
        raw.decode(),
    )
    assert (doc["kafka_partition"], doc["kafka_offset"]) == (2, 41)


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"nope", "invalid_event_not_json"), (b'{"type":"track","event":"x"}', "invalid_event_missing_lead_id")],
)
def test_invalid_events_are_skipped_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(UnstorableRecord) as info:
        to_row(_rec(topics.CLICKSTREAM, value))
    assert info.value.reason == reason


def test_fired_action_row_uses_record_time_as_emit_time() -> None:
    action = Action("act_1", "cart", "v3", "u1", 1000, ("m1", "m2"), "email", "why", context={"rep": "ana"},
                    trigger_time_ms=900)  # fmt: skip
    table, row = to_row(_rec(topics.ACTIONS, action.to_bytes()))
    doc = _as_dict(table, row)
    assert (doc["step"], doc["at"], doc["fired_at"], doc["trigger_time"]) == ("fired", 1000, 1000, 900)
    assert (doc["emitted_at"], doc["trigger"], doc["rep"]) == (1_700_000_000_500, ["m1", "m2"], "ana")
    assert Action.from_json(doc["action"]) == action


def test_delivery_row_is_an_action_step() -> None:
    action = Action("act_1", "cart", "v3", "u1", 1000, ("m1",), "webhook", "why")
    value = topics.delivery_record(action=action.to_json(), outcome="retried", attempt=2, reason="503",
                                   latency_ms=12, at_ms=5000)  # fmt: skip
    doc = _as_dict(*to_row(_rec(topics.DELIVERIES, value)))
    assert (doc["step"], doc["attempt"], doc["at"], doc["reason"], doc["latency_ms"]) == (
        "retried",
        2,
        5000,
        "503",
        12,
    )


def test_dead_letter_and_lead_update_rows() -> None:
    dl = topics.dead_letter_record(source="worker", reason="bad_type", detail="d", payload=b"\xff", at_ms=7)
    doc = _as_dict(*to_row(_rec(topics.DEAD_LETTERS, dl)))
    assert (doc["reason"], doc["payload_encoding"], doc["at"]) == ("bad_type", "base64", 7)
    update = orjson.dumps({"kind": "stage_changed", "stage": "SQL", "owner": {"id": "rep-1"}})
    doc = _as_dict(*to_row(_rec(topics.LEAD_UPDATES, update, key=b"u9")))
    assert (doc["lead_id"], doc["kind"], doc["rep"], doc["at"]) == (
        "u9",
        "stage_changed",
        "rep-1",
        1_700_000_000_500,
    )


@pytest.mark.parametrize(
    "kind", [topics.ACTIONS, topics.DELIVERIES, topics.DEAD_LETTERS, topics.LEAD_UPDATES]
)
def test_malformed_records_are_unstorable(kind: str) -> None:
    with pytest.raises(UnstorableRecord):
        to_row(_rec(kind, b"[1, 2"))


def test_helpers() -> None:
    assert revenue_of({"revenue": 10, "total": 12}) == 10.0
    assert revenue_of({"total": "x"}) is None
    assert rep_of({"owner": "rep-2"}) == "rep-2"
    assert rep_of({}) == ""


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (topics.DEAD_LETTERS, b'{"at_ms": "yesterday"}'),
        (topics.LEAD_UPDATES, b'{"lead_id": "a", "at_ms": "soon"}'),
        (topics.DELIVERIES, b'{"action_id": "a", "outcome": "sent"}'),
        (topics.ACTIONS, b'{"action_id": "a", "rule": "r"}'),
        (topics.ACTIONS, b'{"action_id": "a", "rule": "r", "rule_version": "1", "lead_id": "l", '
                         b'"fired_at_ms": "x", "connector": "c"}'),
    ],
)  # fmt: skip
def test_records_with_wrong_field_types_are_unstorable_not_fatal(kind: str, value: bytes) -> None:
    with pytest.raises(UnstorableRecord) as info:
        to_row(_rec(kind, value))
    assert info.value.reason.startswith("bad_")


def test_journey_step_column() -> None:
    """The journey step lands in `journey_step` (`step` is the delivery step); '' for other kinds and deliveries."""
    journey = Action("act_2", "winback", "v1", "u1", 1000, ("m1",), "email", "why", step="offer")
    assert _as_dict(*to_row(_rec(topics.ACTIONS, journey.to_bytes())))["journey_step"] == "offer"
    plain = Action("act_3", "cart", "v1", "u1", 1000, ("m1",), "email", "why")
    assert _as_dict(*to_row(_rec(topics.ACTIONS, plain.to_bytes())))["journey_step"] == ""
    sent = topics.delivery_record(action=journey.to_json(), outcome="sent", at_ms=5)
    assert _as_dict(*to_row(_rec(topics.DELIVERIES, sent)))["journey_step"] == ""


def test_rules_version_column() -> None:
    """The rule-set version the worker stamps on an action (issue 20) lands in `rules_version` of the fired row."""
    plain = Action("act_4", "cart", "v1", "u1", 1000, ("m1",), "email", "why")
    stamped = plain.to_bytes()[:-1] + b',"rules_version":"abc123"}'
    assert _as_dict(*to_row(_rec(topics.ACTIONS, stamped)))["rules_version"] == "abc123"
    assert _as_dict(*to_row(_rec(topics.ACTIONS, plain.to_bytes())))["rules_version"] == ""
    sent = topics.delivery_record(action=plain.to_json(), outcome="sent", at_ms=5)
    assert _as_dict(*to_row(_rec(topics.DELIVERIES, sent)))["rules_version"] == ""
