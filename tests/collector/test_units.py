"""The collector's pure steps: auth parsing, body decoding and limits, request → events."""

from __future__ import annotations

import base64
import gzip

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.collector.auth import WriteKeys
from engine.collector.decoding import MAX_BATCH_BYTES, MAX_EVENT_BYTES, decompress, parse_object
from engine.collector.errors import RequestRejected
from engine.collector.normalise import normalise, raw_messages
from engine.collector.trust import Auth
from engine.config import ConfigError
from engine.events import MAX_NESTING

NOW_MS = 1_795_000_000_000
SKEW_MS = 5_000  # NUDGE_MAX_CLOCK_SKEW_S's default


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_write_keys_and_their_kinds() -> None:
    keys = WriteKeys(["k1", "k2"], server_keys=["s1"])
    assert keys.check_header(basic("k2")) is Auth.CLIENT
    assert keys.check_header(basic("s1")) is Auth.SERVER
    assert keys.check_header(None) is None  # then the body decides
    assert keys.check_body({"writeKey": "k1"}) is Auth.CLIENT
    assert keys.check_body({"writeKey": "s1"}) is Auth.SERVER
    for header in (basic("nope"), "Bearer k1", "Basic ###", basic("")):
        with pytest.raises(RequestRejected) as refused:
            keys.check_header(header)
        assert refused.value.status == 401
    for body in ({}, {"writeKey": 3}, {"writeKey": "k3"}):
        with pytest.raises(RequestRejected):
            keys.check_body(body)
    with pytest.raises(ConfigError, match="NUDGE_WRITE_KEYS"):
        WriteKeys([])
    with pytest.raises(ConfigError, match="both"):
        WriteKeys(["k1"], server_keys=["k1"])
    assert WriteKeys([], server_keys=["s1"]).check_header(basic("s1")) is Auth.SERVER  # a back end only


def test_decompress_limits_and_errors() -> None:
    data = orjson.dumps({"batch": []})
    assert decompress(gzip.compress(data), "gzip", MAX_BATCH_BYTES) == data
    assert decompress(data, None, MAX_BATCH_BYTES) == data
    cases = {
        "too_large": [
            (b"x" * (MAX_EVENT_BYTES + 1), None, MAX_EVENT_BYTES),
            (gzip.compress(b" " * (MAX_BATCH_BYTES + 1)), "gzip", MAX_BATCH_BYTES),
        ],
        "bad_gzip": [
            (b"plain", "gzip", MAX_BATCH_BYTES),
            (gzip.compress(data)[:-4], "gzip", MAX_BATCH_BYTES),
        ],
        "bad_encoding": [(data, "deflate, br", MAX_BATCH_BYTES)],
    }
    for code, calls in cases.items():
        for body, encoding, limit in calls:
            with pytest.raises(RequestRejected) as refused:
                decompress(body, encoding, limit)
            assert (refused.value.status, refused.value.code) == (400, code)
    for bad in (b"{", b'"text"', b"\xff\xfe"):
        with pytest.raises(RequestRejected, match="bad_json"):
            parse_object(bad)


def test_batch_context_and_sent_at_apply_to_each_event() -> None:
    body = {
        "batch": [
            {"type": "track", "event": "A", "userId": "u", "originalTimestamp": "2026-01-01T00:00:00Z"},
            {
                "type": "track",
                "event": "B",
                "userId": "u",
                "timestamp": "2026-01-01T00:00:05Z",
                "context": {"ip": "own"},
            },
        ],
        "context": {"ip": "shared", "locale": "fr"},
        "sentAt": "2026-01-01T00:00:10Z",
    }
    first, second = normalise(raw_messages(body, "batch"), NOW_MS, SKEW_MS)
    # the device's time + (receivedAt - sentAt): the device clock was off by NOW - sentAt
    sent_at_ms = 1_767_225_610_000
    assert first.timestamp_ms == 1_767_225_600_000 + (NOW_MS - sent_at_ms)
    assert first.context == {"ip": "shared", "locale": "fr"}
    assert second.context == {"ip": "own", "locale": "fr"}
    # a device's `timestamp` is corrected the same way (what the SDKs send), and kept as originalTimestamp
    assert second.timestamp_ms == 1_767_225_605_000 + (NOW_MS - sent_at_ms)
    assert second.original_timestamp_ms == 1_767_225_605_000
    assert first.received_at_ms == second.received_at_ms == NOW_MS
    assert first.sent_at_ms == second.sent_at_ms == sent_at_ms


def test_endpoint_sets_type_and_repeated_message_ids_are_dropped() -> None:
    (event,) = normalise(raw_messages({"type": "track", "userId": "u", "name": "Home"}, "page"), NOW_MS, SKEW_MS)
    assert (event.type, event.name, event.timestamp_ms) == ("page", "Home", NOW_MS)
    same = {"type": "track", "event": "A", "userId": "u", "messageId": "m"}
    assert len(normalise([same, dict(same), {**same, "messageId": "n"}], NOW_MS, SKEW_MS)) == 2


def test_one_bad_event_refuses_the_batch_with_every_bad_index() -> None:
    messages = raw_messages(
        {
            "batch": [
                {"type": "track", "event": "A", "userId": "u"},
                {"type": "track", "event": "A"},
                "x",
                {"type": "nope", "userId": "u"},
                {"type": "track", "userId": "u", "properties": {"pad": "x" * MAX_EVENT_BYTES}},
            ]
        },
        "batch",
    )
    with pytest.raises(RequestRejected) as refused:
        normalise(messages, NOW_MS, SKEW_MS)
    assert refused.value.code == "invalid_events"
    assert [(e["index"], e["reason"]) for e in refused.value.errors] == [
        (1, "missing_lead_id"),
        (2, "not_object"),
        (3, "bad_type"),
        (4, "too_large"),
    ]
    with pytest.raises(RequestRejected, match="bad_batch"):
        raw_messages({"batch": {}}, "batch")


# Any bytes, any JSON: the collector answers with a refusal or events, never with a 500.
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson.loads can return as int
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["track", "page", "identify", "alias", "x"]) | _json_values,
            "event": _json_values,
            "userId": st.text(max_size=8) | _json_values,
            "anonymousId": st.text(max_size=8) | _json_values,
            "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "nope", ""]) | _json_values,
            "properties": _json_values,
            "context": _json_values,
            "traits": _json_values,
        },
    )
    | _json_values,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), encoding=st.sampled_from([None, "gzip", "br"]))
def test_any_bytes_decode_or_are_refused(body: bytes, encoding: str | None) -> None:
    try:
        parse_object(decompress(body, encoding, MAX_EVENT_BYTES))
    except RequestRejected as exc:
        assert exc.status == 400 and exc.message


@settings(max_examples=300, deadline=None)
@given(messages=_messages, endpoint=st.sampled_from(["batch", "track", "identify"]))
def test_any_json_normalises_or_is_refused(messages: list, endpoint: str) -> None:
    body = {"batch": messages} if endpoint == "batch" else (messages[0] if messages else {})
    if not isinstance(body, dict):
        return
    try:
        events = normalise(raw_messages(body, endpoint), NOW_MS, SKEW_MS)
    except RequestRejected as exc:
        assert exc.status == 400 and exc.code in ("invalid_events", "bad_batch")
        return
    assert all(e.lead_id and e.type in ("track", "page", "identify", "alias") for e in events)


def test_a_fast_device_clock_is_corrected_by_sent_at_and_otherwise_clamped() -> None:
    fast = NOW_MS - 2_000 + 90_000  # the event happened 2 s ago, by a device clock 90 s fast
    with_sent_at = {"type": "track", "event": "A", "userId": "u", "timestamp": fast, "sentAt": NOW_MS - 300 + 90_000}
    (event,) = normalise([with_sent_at], NOW_MS, SKEW_MS)
    assert event.timestamp_ms == NOW_MS - 2_000 + 300  # device time + (receivedAt - sentAt)
    assert (event.original_timestamp_ms, event.sent_at_ms, event.received_at_ms) == (
        fast,
        NOW_MS - 300 + 90_000,
        NOW_MS,
    )
    record = orjson.loads(event.to_bytes())
    assert {"timestamp", "originalTimestamp", "sentAt", "receivedAt"} <= set(record)
    # without sentAt nothing can correct it: it is bounded by the receive time, the device's value kept
    (clamped,) = normalise([{**with_sent_at, "sentAt": None}], NOW_MS, SKEW_MS)
    assert (clamped.timestamp_ms, clamped.original_timestamp_ms) == (NOW_MS + SKEW_MS, fast)
    # nor can a wrong sentAt move it into the future
    (wrong,) = normalise([{**with_sent_at, "sentAt": NOW_MS - 3_600_000}], NOW_MS, SKEW_MS)
    assert wrong.timestamp_ms == NOW_MS + SKEW_MS
    # a slow clock or an offline queue: late events keep their (corrected) time
    (late,) = normalise([{**with_sent_at, "timestamp": NOW_MS - 86_400_000, "sentAt": None}], NOW_MS, SKEW_MS)
    assert late.timestamp_ms == NOW_MS - 86_400_000
    # no device time at all: the receive time
    (bare,) = normalise([{"type": "track", "event": "A", "userId": "u"}], NOW_MS, SKEW_MS)
    assert (bare.timestamp_ms, bare.original_timestamp_ms) == (NOW_MS, None)


def test_every_timestamp_form_refuses_the_event() -> None:
    base = {"type": "track", "event": "A", "userId": "u", "timestamp": NOW_MS}
    for field in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
        for value in (1e308, -1, 12345, "0001-01-01T00:00:00Z", "soon", True):
            with pytest.raises(RequestRejected) as refused:
                normalise([{**base, field: value}], NOW_MS, SKEW_MS)
            assert [e["reason"] for e in refused.value.errors] == ["bad_timestamp"], (field, value)


def deep(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_nesting_past_the_limit_is_too_deep() -> None:
    ok = {"type": "track", "event": "A", "userId": "u", "properties": deep(MAX_NESTING)}
    assert normalise([ok], NOW_MS, SKEW_MS)
    for depth in (MAX_NESTING + 1, 255, 1000):
        for field in ("properties", "traits", "context"):
            with pytest.raises(RequestRejected) as refused:
                normalise([{**ok, field: deep(depth)}], NOW_MS, SKEW_MS)
            assert [e["reason"] for e in refused.value.errors] == ["too_deep"]


def test_control_characters_are_stripped_from_traits() -> None:
    identify = {
        "type": "identify",
        "userId": "u",
        "traits": {"name": "Ann\r\nBcc: all@example.com", "note": "a\tb\x00c\x1b\x85\u2028", "x\ny": ["p\rq"]},
        "context": {"traits": {"name": "C\nD"}, "ip": "1\n2"},
    }
    (event,) = normalise([identify], NOW_MS, SKEW_MS)
    assert event.traits == {"name": "AnnBcc: all@example.com", "note": "a\tbc", "xy": ["pq"]}
    assert event.context == {"traits": {"name": "CD"}, "ip": "1\n2"}  # only traits are cleaned


def test_a_synthetic_message_id_does_not_change_with_sent_at() -> None:
    event = {"type": "track", "event": "A", "userId": "u", "timestamp": NOW_MS - 1000}
    first = normalise([{**event, "sentAt": NOW_MS - 500}], NOW_MS, SKEW_MS)
    retried = normalise([{**event, "sentAt": NOW_MS + 30_000}], NOW_MS + 30_500, SKEW_MS)
    assert first[0].message_id == retried[0].message_id
