"""The Segment event model: what is accepted, how time is normalised, and the reason codes for what is not."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import (
    MAX_NESTING,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    InvalidEvent,
    format_ts,
    parse_event,
    parse_ts,
)

T = 1_795_000_000_000  # 2026-11-18T11:06:40Z in epoch milliseconds


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
        {"type": "track", "event": "x", "userId": "u", "timestamp": T, "context": {"traits": {"email": "a@b.c"}}}
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
        (orjson.dumps({"type": "click", "userId": "u", "timestamp": T}), "bad_type"),
        (orjson.dumps({"type": ["track"], "userId": "u", "timestamp": T}), "bad_type"),
        (orjson.dumps({"type": "track", "event": "x", "timestamp": T}), "missing_lead_id"),
        (orjson.dumps({"type": "track", "event": "x", "userId": "u"}), "missing_timestamp"),
        (orjson.dumps({"type": "track", "event": "x", "userId": "u", "timestamp": "yesterday"}), "bad_timestamp"),
        (orjson.dumps({"type": "track", "userId": "u", "timestamp": T}), "missing_event_name"),
        (orjson.dumps({"type": "track", "event": "x", "userId": {"a": 1}, "timestamp": T}), "bad_id"),
        (orjson.dumps({"type": "track", "event": "x", "userId": "u", "timestamp": T, "properties": []}), "bad_field"),
    ],
)
def test_invalid_input_has_a_stable_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.reason == reason
    assert info.value.detail


def track_at(**times: object) -> dict[str, object]:
    return {"type": "track", "event": "x", "userId": "u", "messageId": "m", **times}


BAD_TIMESTAMPS = [
    1e308,
    -1,
    0,
    12345,
    1_795_000_000,  # epoch seconds where milliseconds are expected
    MIN_TIMESTAMP_MS - 1,
    MAX_TIMESTAMP_MS,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "1999-12-31T23:59:59.999Z",
    "2100-01-01T00:00:00Z",
    "yesterday",
    "-1",
    "2026-13-45T99:99:99Z",
    "Z",
    "x" * 10_000,
    [2026],
    {"at": T},
]


@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt", "receivedAt"])
@pytest.mark.parametrize("value", BAD_TIMESTAMPS, ids=lambda value: repr(value)[:30])
def test_every_timestamp_field_is_validated_into_the_range(field: str, value: object) -> None:
    doc = {**track_at(timestamp=format_ts(T)), field: value}
    with pytest.raises(InvalidEvent) as info:
        parse_event(doc)
    assert info.value.reason == "bad_timestamp"
    assert field in info.value.detail and len(info.value.detail) < 200  # quotes a long value only in part
    if field != "receivedAt":  # as the collector parses it: its own receive time given, the message's validated
        with pytest.raises(InvalidEvent):
            parse_event(doc, received_at_ms=T)


def test_timestamps_at_the_edges_of_the_range_and_in_every_form() -> None:
    assert parse_ts(MIN_TIMESTAMP_MS) == MIN_TIMESTAMP_MS
    assert parse_ts(MAX_TIMESTAMP_MS - 1) == MAX_TIMESTAMP_MS - 1
    assert parse_ts(float(T) + 0.9) == T
    assert parse_ts("2000-01-01T00:00:00Z") == MIN_TIMESTAMP_MS
    assert parse_ts("2099-12-31T23:59:59.999Z") == MAX_TIMESTAMP_MS - 1
    assert parse_ts("2026-11-18T12:06:40+01:00") == T
    assert parse_ts("2026-11-18T11:06:40") == T  # no offset: UTC
    assert parse_ts(" 2026-11-18T11:06:40z ") == T
    with pytest.raises(InvalidEvent, match="looks like seconds"):
        parse_ts(T // 1000)


def test_a_skew_correction_that_leaves_the_range_is_a_bad_timestamp() -> None:
    doc = track_at(originalTimestamp="2000-01-01T00:00:01Z", sentAt="2099-01-01T00:00:00Z")
    with pytest.raises(InvalidEvent) as info:
        parse_event(doc, received_at_ms=T)
    assert info.value.reason == "bad_timestamp" and "skew" in info.value.detail


def test_received_sent_and_original_times_are_kept_and_round_trip() -> None:
    sent, received = T + 90_000, T + 500  # a device clock 90 s fast
    doc = track_at(
        timestamp=format_ts(T + 200),
        originalTimestamp=format_ts(T + 90_000 - 300),
        sentAt=format_ts(sent),
        receivedAt=format_ts(received),
    )
    event = parse_event(orjson.dumps(doc))
    # `timestamp` is the event time as given: the correction was made once, at the collector
    assert (event.timestamp_ms, event.received_at_ms) == (T + 200, received)
    assert (event.sent_at_ms, event.original_timestamp_ms) == (sent, T + 90_000 - 300)
    assert parse_event(event.to_bytes()) == event
    assert event.to_json()["receivedAt"] == format_ts(received)
    # the receive time the caller knows (the collector's clock, a ClickHouse column) wins over the message's
    assert parse_event(doc, received_at_ms=T + 1).received_at_ms == T + 1
    # without `timestamp`: originalTimestamp + (receivedAt - sentAt)
    (no_timestamp := dict(doc)).pop("timestamp")
    assert parse_event(no_timestamp).timestamp_ms == T + 90_000 - 300 + (received - sent)
    assert parse_event(track_at(timestamp=T)).received_at_ms is None


def nested_json(field: str, depth: int) -> str:
    """An event whose `field` holds objects and arrays `depth` levels deep (the field's own object is level 1),
    as JSON text: orjson cannot even write it past 254 levels."""
    opening = "".join('{"k":' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    head = orjson.dumps(track_at(timestamp=T)).decode()[:-1]
    return f'{head},"{field}":{opening}1{closing}}}'


@pytest.mark.parametrize("field", ["properties", "traits", "context", "integrations"])
def test_nesting_is_limited(field: str) -> None:
    assert parse_event(nested_json(field, MAX_NESTING))
    assert parse_event(orjson.loads(nested_json(field, MAX_NESTING)))
    for depth in (MAX_NESTING + 1, 300, 1000):
        text = nested_json(field, depth)
        for raw in (text, text.encode(), orjson.loads(text)):
            with pytest.raises(InvalidEvent) as info:
                parse_event(raw)
            assert info.value.reason == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    event = parse_event(orjson.dumps(track_at(timestamp=T, properties={"text": "[{" * 500})))
    assert event.properties["text"].startswith("[{")


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["2026-11-18T11:06:40Z", "2026-11-18T11:06:40.5+14:00", "0001-01-01T00:00:00Z", ""])
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")


@settings(max_examples=400, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {"type": st.sampled_from(["track", "identify"]), "event": st.just("x"), "userId": st.just("u")},
        optional={
            **{name: json_values for name in TIME_FIELDS},
            "properties": json_values,
            "messageId": json_values,
        },
    ),
    received_at_ms=st.none() | st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1),
)
def test_any_timestamps_give_an_event_in_range_or_invalid_event(doc: dict, received_at_ms: int | None) -> None:
    try:
        event = parse_event(doc, received_at_ms=received_at_ms)
    except InvalidEvent as exc:  # never another exception
        assert exc.reason in {"bad_timestamp", "missing_timestamp", "bad_field", "bad_id"}, exc
        return
    for ms in (event.timestamp_ms, event.received_at_ms, event.sent_at_ms, event.original_timestamp_ms):
        assert ms is None or MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS
    format_ts(event.timestamp_ms)


@pytest.mark.parametrize("field", ["userId", "anonymousId", "previousId"])
@pytest.mark.parametrize("value", [".", "..", " ", "\t\n", "\u2003", "x" * 257])
def test_unusable_ids_are_bad_ids(field: str, value: str) -> None:
    doc = {"type": "alias", "userId": "u", "anonymousId": "a", "timestamp": T, field: value}
    with pytest.raises(InvalidEvent) as refused:
        parse_event(doc)
    assert refused.value.reason == "bad_id"


def test_ids_that_look_odd_but_are_usable() -> None:
    for lead in ("...", ".u", " u ", "x" * 256, "0"):
        assert parse_event({"type": "page", "userId": lead, "timestamp": T}).lead_id == lead
    numbers = parse_event({"type": "page", "userId": 42, "anonymousId": 1.5, "messageId": 7, "timestamp": T})
    assert (numbers.user_id, numbers.anonymous_id, numbers.message_id) == ("42", "1.5", "7")  # as their text
    for message_id in (".", " "):  # a messageId names no lead: it only has to be an id
        assert parse_event({"type": "page", "userId": "u", "messageId": message_id, "timestamp": T}).message_id
    # an empty id is no id (Segment's "not set"): the other one is the lead
    assert parse_event({"type": "page", "userId": "", "anonymousId": "a", "timestamp": T}).lead_id == "a"


def test_trusted_follows_the_collectors_mark_and_round_trips() -> None:
    base = {"type": "track", "event": "x", "userId": "u", "timestamp": T}
    assert parse_event(base).trusted  # produced to Kafka directly: trusted
    assert parse_event({**base, "context": {"nudge": {"trusted": True, "auth": "server"}}}).trusted
    untrusted = parse_event({**base, "context": {"nudge": {"trusted": False, "auth": "client"}}})
    assert not untrusted.trusted
    for odd in ({"trusted": "false"}, {"trusted": 0}, "false", None):  # only the collector's exact mark counts
        assert parse_event({**base, "context": {"nudge": odd}}).trusted
    assert parse_event(untrusted.to_bytes()) == untrusted
    # an Event built as untrusted writes the mark itself, so the worker reads it back the same
    built = dataclasses.replace(parse_event(base), trusted=False)
    assert built.to_json()["context"]["nudge"] == {"trusted": False}
    assert parse_event(built.to_bytes()).trusted is False
    assert parse_event(dataclasses.replace(untrusted, trusted=True).to_bytes()).trusted is True
