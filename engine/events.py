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


class InvalidEvent(ValueError):
    """An input message that cannot become an `Event`; `reason` is a stable code, `detail` a human sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One normalised clickstream event. `timestamp_ms` is event time in UTC epoch milliseconds."""

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
            "context": self.context,
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
        if self.received_at_ms is not None:
            out["receivedAt"] = format_ts(self.received_at_ms)
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_ts(ms: int) -> str:
    """UTC ISO-8601 with milliseconds and a `Z`, the one timestamp format Nudge writes."""
    # Exact integer arithmetic and the C isoformat: faster than strftime on the action path.
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise ValueError(f"timestamp {ms} ms is out of range") from None  # what datetime raised before
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_ts(value: Any, field_name: str = "timestamp") -> int:
    """ISO-8601 string (or epoch milliseconds as a number) → UTC epoch milliseconds."""
    if type(value) is str and value[-1:] == "Z":  # the common shape, parsed without the checks below
        try:
            return round(datetime.fromisoformat(value).timestamp() * 1000)
        except ValueError:
            pass  # the general path reports it
    if isinstance(value, bool):
        raise InvalidEvent("bad_timestamp", f"{field_name} must be an ISO-8601 string, got a boolean")
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str) or not value:
        raise InvalidEvent("bad_timestamp", f"{field_name} must be an ISO-8601 string, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent("bad_timestamp", f"{field_name} {value!r} is not ISO-8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def _as_dict(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent("bad_field", f"{field_name} must be an object, got {type(value).__name__}")
    return value


def _as_id(value: Any, field_name: str) -> str | None:
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:  # the common case first: it is on the hot path
        return value
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidEvent("bad_id", f"{field_name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent("bad_id", f"{field_name} is longer than {MAX_ID_LENGTH} characters")
    return value


def _event_time(doc: dict[str, Any], received_at_ms: int | None) -> int:
    if doc.get("timestamp") not in (None, ""):
        return parse_ts(doc["timestamp"], "timestamp")
    if doc.get("originalTimestamp") not in (None, ""):
        original = parse_ts(doc["originalTimestamp"], "originalTimestamp")
        if doc.get("sentAt") not in (None, "") and received_at_ms is not None:
            # The device clock may be off: shift by how far its send time is from our receive time.
            return original + (received_at_ms - parse_ts(doc["sentAt"], "sentAt"))
        return original
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
    - Event time is `timestamp` (ISO-8601, any offset; normalised to UTC milliseconds). When it is missing,
      `originalTimestamp` corrected by the clock skew `receivedAt - sentAt` is used, then `receivedAt`
      (`received_at_ms` when given). An event with none of them is invalid: Nudge never silently substitutes
      processing time for event time.
    - The lead id is `userId`, else `anonymousId`. Nothing else is required of an event except `type` and, for
      `track`, `event`. Without a `messageId`, a deterministic synthetic one is derived from the content.
    """
    if isinstance(raw, dict):
        doc = raw
    else:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("not_json", f"body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("not_object", f"event must be a JSON object, got {type(doc).__name__}")
    event_type = doc.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:  # a list or dict is unhashable
        raise InvalidEvent("bad_type", f"type must be one of {sorted(EVENT_TYPES)}, got {event_type!r}")
    user_id = _as_id(doc.get("userId"), "userId")
    anonymous_id = _as_id(doc.get("anonymousId"), "anonymousId")
    lead_id = user_id or anonymous_id
    if lead_id is None:
        raise InvalidEvent("missing_lead_id", "event has neither userId nor anonymousId")
    if received_at_ms is None and doc.get("receivedAt") not in (None, ""):
        received_at_ms = parse_ts(doc["receivedAt"], "receivedAt")
    timestamp_ms = _event_time(doc, received_at_ms)
    name: str | None
    if event_type == "track":
        name = doc.get("event")
        if not isinstance(name, str) or not name:
            raise InvalidEvent("missing_event_name", "track event has no `event` name")
    else:
        raw_name = doc.get("name")
        name = raw_name if isinstance(raw_name, str) and raw_name else None
    context = _as_dict(doc.get("context"), "context")
    traits = _as_dict(doc.get("traits"), "traits") or _as_dict(context.get("traits"), "context.traits")
    properties = _as_dict(doc.get("properties"), "properties")
    message_id = _as_id(doc.get("messageId"), "messageId") or synthetic_message_id(doc)
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
    )
