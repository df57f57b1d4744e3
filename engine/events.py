"""The Segment-spec event model, shared by the collector, the worker, the sink and `nudge simulate`. Pure: no I/O,
no Faust or Kafka imports."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

EVENT_TYPES = frozenset({"track", "page", "screen", "identify", "alias", "group"})
MAX_ID_LENGTH = 256
# Every timestamp field (`timestamp`, `originalTimestamp`, `sentAt`, `receivedAt`) and the event time derived from
# them must fall in [2000-01-01, 2100-01-01) UTC. Nothing real is outside it, while everything outside it is a bug
# (epoch seconds sent as milliseconds, 0 or -1 placeholders, 1e308) that would otherwise break date arithmetic,
# serialisation or the ClickHouse DateTime64 column further down the line.
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z, excluded
# Objects and arrays nest at most this deep below the event (its `properties` object is level 1). Real events nest
# a few levels; orjson refuses to write more than 254 and a Python walk of thousands overflows the stack.
MAX_NESTING = 32
_SHOWN_CHARS = 60  # how much of a bad value a reason's detail quotes
# Ids that are no ids: they would name a directory in a URL path (`/v1/leads/..`) or nobody at all.
_UNUSABLE_IDS = frozenset({".", ".."})
# Where the collector writes whether an event is trusted (`context.nudge.trusted`); see `Event.trusted`.
TRUST_MARKER = "nudge"


class InvalidEvent(ValueError):
    """An input message that cannot become an `Event`; `reason` is a stable code, `detail` a human sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One normalised clickstream event. `timestamp_ms` is event time in UTC epoch milliseconds.

    The other times, when the message carried them (all UTC epoch milliseconds, in the accepted range):
    `received_at_ms` when the collector received it (its own clock: the one time a device cannot move),
    `sent_at_ms` when the device says it sent it, `original_timestamp_ms` the event time by the device's clock.

    `trusted`: whether the event's sender was authenticated as able to speak for the lead. The collector writes
    `context.nudge.trusted` on every event (true for a server write key or a verified user hash, false for a
    browser write key alone; whatever the client sent there is overwritten); a record without that marker was
    produced to Kafka directly (a server-side producer) and is trusted. Rule matchers with `trusted: true` only
    match trusted events (docs/collector.md, "Trust model").
    """

    message_id: str
    lead_id: str
    type: str
    timestamp_ms: int
    name: str | None = None  # track: the event name ("Product Added"); page/screen: the page name
    user_id: str | None = None
    anonymous_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    previous_id: str | None = None  # alias: the id being merged into user_id
    received_at_ms: int | None = None
    sent_at_ms: int | None = None
    original_timestamp_ms: int | None = None
    trusted: bool = True

    def document(self) -> dict[str, Any]:
        """The event as matchers see it: Segment field names, so `where` paths read like the spec."""
        return {
            "type": self.type,
            "event": self.name if self.type == "track" else None,
            "name": self.name,
            "messageId": self.message_id,
            "userId": self.user_id,
            "anonymousId": self.anonymous_id,
            "leadId": self.lead_id,
            "timestamp": self.timestamp_ms,
            "properties": self.properties,
            "traits": self.traits,
            "context": self.context,
        }

    def to_json(self) -> dict[str, Any]:
        """A Segment-shaped dict that `parse_event` turns back into an equal `Event`."""
        out: dict[str, Any] = {
            "type": self.type,
            "messageId": self.message_id,
            "timestamp": format_ts(self.timestamp_ms),
            "properties": self.properties,
            "traits": self.traits,
            "context": self._context_with_trust(),
        }
        if self.type == "track":
            out["event"] = self.name
        elif self.name is not None:
            out["name"] = self.name
        if self.user_id is not None:
            out["userId"] = self.user_id
        if self.anonymous_id is not None:
            out["anonymousId"] = self.anonymous_id
        if self.previous_id is not None:
            out["previousId"] = self.previous_id
        if self.original_timestamp_ms is not None:
            out["originalTimestamp"] = format_ts(self.original_timestamp_ms)
        if self.sent_at_ms is not None:
            out["sentAt"] = format_ts(self.sent_at_ms)
        if self.received_at_ms is not None:
            out["receivedAt"] = format_ts(self.received_at_ms)
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    def _context_with_trust(self) -> dict[str, Any]:
        """`context`, with `nudge.trusted` set to `trusted` when the context says otherwise (so `parse_event` gives
        the same `trusted` back); unchanged, without a copy, in the usual case where they agree."""
        marker = self.context.get(TRUST_MARKER)
        marked_untrusted = type(marker) is dict and marker.get("trusted") is False
        if marked_untrusted != self.trusted:
            return self.context
        fields = marker if type(marker) is dict else {}
        return {**self.context, TRUST_MARKER: {**fields, "trusted": self.trusted}}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_ts(ms: int) -> str:
    """UTC ISO-8601 with milliseconds and a `Z`, the one timestamp format Nudge writes."""
    # Exact integer arithmetic and the C isoformat: faster than strftime on the action path.
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise ValueError(f"timestamp {ms} ms is out of range") from None  # what datetime raised before
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _out_of_range(field_name: str, value: Any) -> InvalidEvent:
    hint = ""
    if isinstance(value, int | float) and MIN_TIMESTAMP_MS / 1000 <= value < MAX_TIMESTAMP_MS / 1000:
        hint = " (numbers are epoch milliseconds; this looks like seconds)"
    return InvalidEvent(
        "bad_timestamp",
        f"{field_name} {_shown(value)} is outside the accepted range 2000-01-01 .. 2100-01-01 UTC{hint}",
    )


def parse_ts(value: Any, field_name: str = "timestamp") -> int:
    """ISO-8601 string (any offset; UTC when it has none) or epoch milliseconds as a number → UTC epoch
    milliseconds in [`MIN_TIMESTAMP_MS`, `MAX_TIMESTAMP_MS`). Anything else (not ISO-8601, a boolean, NaN,
    infinities, out of range) raises `InvalidEvent("bad_timestamp")`, never another error."""
    if type(value) is str and value[-1:] == "Z":  # the common shape, parsed without the checks below
        try:
            ms = round(datetime.fromisoformat(value).timestamp() * 1000)
        except (ValueError, OverflowError):
            pass  # the general path reports it
        else:
            if MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
                return ms
            raise _out_of_range(field_name, value)
    if isinstance(value, bool):
        raise InvalidEvent("bad_timestamp", f"{field_name} must be an ISO-8601 string, got a boolean")
    if isinstance(value, int | float):
        if MIN_TIMESTAMP_MS <= value < MAX_TIMESTAMP_MS:  # False for NaN and the infinities too
            return int(value)
        raise _out_of_range(field_name, value)
    if not isinstance(value, str) or not value:
        raise InvalidEvent("bad_timestamp", f"{field_name} must be an ISO-8601 string, got {_shown(value)}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ms = round(parsed.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise InvalidEvent("bad_timestamp", f"{field_name} {_shown(value)} is not ISO-8601") from None
    if MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        return ms
    raise _out_of_range(field_name, value)


def _optional_ts(doc: dict[str, Any], field_name: str) -> int | None:
    value = doc.get(field_name)
    return None if value is None or value == "" else parse_ts(value, field_name)


# `receivedAt` and `sentAt` are stamped once per request, so consecutive records of a partition mostly repeat them:
# a small memo of parsed strings saves the worker most of their parsing (only valid values are remembered).
_SHARED_TS_MEMO: dict[str, int] = {}
_SHARED_TS_MEMO_SIZE = 1024


def _shared_ts(doc: dict[str, Any], field_name: str) -> int | None:
    value = doc.get(field_name)
    if type(value) is str:
        known = _SHARED_TS_MEMO.get(value)
        if known is not None:
            return known
        if not value:
            return None
        ms = parse_ts(value, field_name)
        if len(_SHARED_TS_MEMO) >= _SHARED_TS_MEMO_SIZE:
            _SHARED_TS_MEMO.clear()
        _SHARED_TS_MEMO[value] = ms
        return ms
    return None if value is None else parse_ts(value, field_name)


def nested_too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """True when objects or arrays inside `value` nest more than `limit` levels below it. Iterative, and it stops
    descending at the limit, so a hostile document costs at most its size, never the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        container, depth = stack.pop()
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _as_dict(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent("bad_field", f"{field_name} must be an object, got {type(value).__name__}")
    return value


def _as_message_id(value: Any) -> str | None:
    """`messageId`: as a lead id (`_as_id`), but `.` or blank pass: it names no lead, no key, no path."""
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:  # the common case first: it is on the hot path
        return value
    return _as_id(value, "messageId")  # absent, a number, too long or not a string


def _as_id(value: Any, field_name: str) -> str | None:
    """A lead id field: None when absent or empty (Segment's "not set"); a string of 1 to `MAX_ID_LENGTH`
    characters that is neither blank (whitespace only) nor `.` / `..`; numbers are taken as their text. Else
    `bad_id`."""
    if (  # the common case first, in C-speed checks: it is on the hot path
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and value not in _UNUSABLE_IDS
        and not value.isspace()
    ):
        return value
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidEvent("bad_id", f"{field_name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent("bad_id", f"{field_name} is longer than {MAX_ID_LENGTH} characters")
    if value in _UNUSABLE_IDS or value.isspace():
        raise InvalidEvent("bad_id", f"{field_name} {_shown(value)} is not a usable id (whitespace only, '.' or '..')")
    return value  # a number's text


def _event_time(
    doc: dict[str, Any], original_ms: int | None, sent_at_ms: int | None, received_at_ms: int | None
) -> int:
    if doc.get("timestamp") not in (None, ""):
        return parse_ts(doc["timestamp"], "timestamp")
    if original_ms is not None:
        if sent_at_ms is None or received_at_ms is None:
            return original_ms
        # The device clock may be off: shift by how far its send time is from our receive time (Segment's
        # `receivedAt - (sentAt - originalTimestamp)`).
        corrected = original_ms + (received_at_ms - sent_at_ms)
        if MIN_TIMESTAMP_MS <= corrected < MAX_TIMESTAMP_MS:
            return corrected
        raise InvalidEvent(
            "bad_timestamp",
            f"originalTimestamp corrected by the device's clock skew (receivedAt - sentAt) is {corrected} ms, "
            "outside the accepted range 2000-01-01 .. 2100-01-01 UTC",
        )
    if received_at_ms is not None:
        return received_at_ms
    raise InvalidEvent("missing_timestamp", "event has no timestamp, originalTimestamp or receivedAt")


def synthetic_message_id(doc: dict[str, Any]) -> str:
    """A stable id for an event sent without `messageId`, so replays still dedupe and actions stay deterministic."""
    try:
        canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # orjson refuses integers beyond 64 bits (a decoded dict may hold them); the stdlib encoder does not.
        canonical = json.dumps(doc, sort_keys=True, default=str).encode()
    return "nm-" + hashlib.sha1(canonical).hexdigest()[:24]


def parse_event(raw: bytes | str | dict[str, Any], received_at_ms: int | None = None) -> Event:
    """Validate and normalise one Segment-spec message: bytes / str of JSON, or an already decoded dict.

    Returns an immutable `Event`, or raises `InvalidEvent` whose `reason` is a short, stable, machine-readable code
    (used as a Prometheus label and in the dead-letter record) and whose `detail` says what was wrong, for a human;
    never anything else for bad input.
    - Event time is `timestamp` as given (ISO-8601, any offset, or epoch milliseconds; normalised to UTC
      milliseconds): producers writing to Kafka directly are trusted, and records from the collector already carry
      the corrected time (the collector applies the device clock correction once, at the edge). When `timestamp`
      is missing, `originalTimestamp` corrected by the clock skew `receivedAt - sentAt` is used, then
      `receivedAt` (`received_at_ms` when given, else the message's own). An event with none of them is invalid:
      Nudge never silently substitutes processing time for event time.
    - Every timestamp field present (`timestamp`, `originalTimestamp`, `sentAt`, `receivedAt`) and the derived
      event time must lie in [`MIN_TIMESTAMP_MS`, `MAX_TIMESTAMP_MS`) (2000-01-01 .. 2100-01-01 UTC), else
      `bad_timestamp`.
    - Objects and arrays nested more than `MAX_NESTING` levels below the event: `too_deep`.
    - The lead id is `userId`, else `anonymousId`. Nothing else is required of an event except `type` and, for
      `track`, `event`. Without a `messageId`, a deterministic synthetic one is derived from the content. Ids
      are at most `MAX_ID_LENGTH` characters, and lead ids (`userId`, `anonymousId`, `previousId`) neither
      whitespace only nor `.` / `..` (`bad_id`); an empty one counts as absent.
    - `trusted` is false only when `context.nudge.trusted` is `false` (see `Event.trusted`).
    """
    opened: int | None = None  # opening brackets in the raw text: an upper bound of the nesting depth
    if isinstance(raw, dict):
        doc = raw
    else:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("not_json", f"body is not JSON ({exc})") from None
        text = raw if isinstance(raw, str | bytes | bytearray) else bytes(raw)
        opened = text.count("{") + text.count("[") if isinstance(text, str) else text.count(b"{") + text.count(b"[")
    if not isinstance(doc, dict):
        raise InvalidEvent("not_object", f"event must be a JSON object, got {type(doc).__name__}")
    # Text with fewer opening brackets than the limit cannot nest too deep: the walk is only for the rare rest.
    if (opened is None or opened > MAX_NESTING + 1) and nested_too_deep(doc):
        raise InvalidEvent("too_deep", f"objects or arrays are nested more than {MAX_NESTING} levels deep")
    event_type = doc.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:  # a list or dict is unhashable
        raise InvalidEvent("bad_type", f"type must be one of {sorted(EVENT_TYPES)}, got {event_type!r}")
    user_id = _as_id(doc.get("userId"), "userId")
    anonymous_id = _as_id(doc.get("anonymousId"), "anonymousId")
    lead_id = user_id or anonymous_id
    if lead_id is None:
        raise InvalidEvent("missing_lead_id", "event has neither userId nor anonymousId")
    own_received_at_ms = _shared_ts(doc, "receivedAt")  # validated even when `received_at_ms` overrides it
    if received_at_ms is None:
        received_at_ms = own_received_at_ms
    sent_at_ms = _shared_ts(doc, "sentAt")
    original_ms = _optional_ts(doc, "originalTimestamp")
    timestamp_ms = _event_time(doc, original_ms, sent_at_ms, received_at_ms)
    name: str | None
    if event_type == "track":
        name = doc.get("event")
        if not isinstance(name, str) or not name:
            raise InvalidEvent("missing_event_name", "track event has no `event` name")
    else:
        raw_name = doc.get("name")
        name = raw_name if isinstance(raw_name, str) and raw_name else None
    context = _as_dict(doc.get("context"), "context")
    marker = context.get(TRUST_MARKER)
    trusted = type(marker) is not dict or marker.get("trusted") is not False
    traits = _as_dict(doc.get("traits"), "traits") or _as_dict(context.get("traits"), "context.traits")
    properties = _as_dict(doc.get("properties"), "properties")
    message_id = _as_message_id(doc.get("messageId")) or synthetic_message_id(doc)
    return Event(
        message_id=message_id,
        lead_id=lead_id,
        type=event_type,
        timestamp_ms=timestamp_ms,
        name=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        properties=properties,
        traits=traits,
        context=context,
        previous_id=_as_id(doc.get("previousId"), "previousId"),
        received_at_ms=received_at_ms,
        sent_at_ms=sent_at_ms,
        original_timestamp_ms=original_ms,
        trusted=trusted,
    )
