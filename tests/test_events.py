"""The Segment event model: what is accepted, how time is normalised, and the reason codes for what is not."""

from __future__ import annotations

import orjson
import pytest

from engine.events import InvalidEvent, format_ts, parse_event, parse_ts


def test_track_event_is_normalised() -> None:
    event = parse_event(
        b'{"type":"track","event":"Product Added","userId":"u1","anonymousId":"a1","messageId":"m1",'
        b'"timestamp":"2026-03-01T10:00:00.250+01:00","properties":{"price":9.5}}'
    )
    assert event.lead_id == "u1"  # userId wins over anonymousId
    assert event.name == "Product Added"
    assert event.timestamp_ms == parse_ts("2026-03-01T09:00:00.250Z")
    assert format_ts(event.timestamp_ms) == "2026-03-01T09:00:00.250Z"
    assert event.document()["properties"]["price"] == 9.5


def test_round_trip_through_json() -> None:
    event = parse_event({"type": "page", "name": "Pricing", "anonymousId": "a1", "timestamp": "2026-03-01T09:00:00Z"})
    assert parse_event(event.to_bytes()) == event


def test_original_timestamp_is_corrected_by_clock_skew() -> None:
    # The device clock is 60 s behind: sentAt says 11:59, we received it at 12:00.
    event = parse_event(
        {
            "type": "track",
            "event": "x",
            "userId": "u",
            "originalTimestamp": "2026-03-01T11:58:00Z",
            "sentAt": "2026-03-01T11:59:00Z",
        },
        received_at_ms=parse_ts("2026-03-01T12:00:00Z"),
    )
    assert format_ts(event.timestamp_ms) == "2026-03-01T11:59:00.000Z"


def test_traits_fall_back_to_context_traits() -> None:
    event = parse_event(
        {"type": "track", "event": "x", "userId": "u", "timestamp": 0, "context": {"traits": {"email": "a@b.c"}}}
    )
    assert event.traits == {"email": "a@b.c"}


def test_missing_message_id_gets_a_stable_synthetic_one() -> None:
    big = 2**70  # beyond what orjson encodes
    doc = {"type": "track", "event": "x", "userId": "u", "timestamp": "2026-03-01T09:00:00Z", "properties": {"n": big}}
    assert parse_event(doc).message_id == parse_event(dict(doc)).message_id
    assert parse_event(doc).message_id.startswith("nm-")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (b"[1,2]", "not_object"),
        (orjson.dumps({"type": "click", "userId": "u", "timestamp": 0}), "bad_type"),
        (orjson.dumps({"type": ["track"], "userId": "u", "timestamp": 0}), "bad_type"),
        (orjson.dumps({"type": "track", "event": "x", "timestamp": 0}), "missing_lead_id"),
        (orjson.dumps({"type": "track", "event": "x", "userId": "u"}), "missing_timestamp"),
        (orjson.dumps({"type": "track", "event": "x", "userId": "u", "timestamp": "yesterday"}), "bad_timestamp"),
        (orjson.dumps({"type": "track", "userId": "u", "timestamp": 0}), "missing_event_name"),
        (orjson.dumps({"type": "track", "event": "x", "userId": {"a": 1}, "timestamp": 0}), "bad_id"),
        (orjson.dumps({"type": "track", "event": "x", "userId": "u", "timestamp": 0, "properties": []}), "bad_field"),
    ],
)
def test_invalid_input_has_a_stable_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.reason == reason
    assert info.value.detail
