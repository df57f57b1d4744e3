"""Request body → validated, normalised `Event`s, all or nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from engine.collector.decoding import MAX_EVENT_BYTES
from engine.collector.errors import bad_request
from engine.collector.event_time import as_device_time, bounded_by_receipt
from engine.events import Event, InvalidEvent, parse_event, synthetic_message_id

SINGLE_EVENT_ENDPOINTS = ("track", "page", "screen", "identify", "alias", "group")
MAX_LISTED_ERRORS = 50
MAX_TRAITS = 100  # per event; NUDGE_COLLECTOR_MAX_TRAITS
# Stamped per request by the SDK or by us: left out of a synthetic messageId, so an SDK's retry of an event sent
# without one gets the same id and is deduplicated.
_PER_REQUEST_FIELDS = ("sentAt", "receivedAt", "writeKey")
# Stripped from traits, which end up in email headers, CRM fields and Slack messages, where a CR/LF breaks or
# injects a line: the C0 controls except tab, DEL, the C1 controls, and the Unicode line and paragraph separators.
_CONTROL_CHARACTERS = dict.fromkeys(
    [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
)


def raw_messages(body: dict[str, Any], endpoint: str) -> list[Any]:
    """The Segment messages of one request. `/v1/batch` bodies carry `batch: [...]`; the batch's own `context` is
    merged under each event's `context` (the event's keys win) and its `sentAt` applies to events without one, as
    in Segment's API. Single-event endpoints take the body as the event; the endpoint decides `type` (a body
    `type` that disagrees is overwritten). Raises `400 bad_batch` for a batch body without a `batch` array."""
    if endpoint != "batch":
        return [{**body, "type": endpoint}]
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise bad_request("bad_batch", "a /v1/batch body must have `batch`: an array of Segment events")
    shared_context = body.get("context") if isinstance(body.get("context"), dict) else {}
    sent_at = body.get("sentAt")
    messages: list[Any] = []
    for item in batch:
        if not isinstance(item, dict):
            messages.append(item)  # normalise reports it with its index
            continue
        message = dict(item)
        if shared_context:
            own_context = item.get("context")
            if own_context is None or isinstance(own_context, dict):
                message["context"] = {**shared_context, **(own_context or {})}
        if sent_at is not None and message.get("sentAt") in (None, ""):
            message["sentAt"] = sent_at
        messages.append(message)
    return messages


def normalise(
    messages: list[Any], received_at_ms: int, max_clock_skew_ms: int, max_traits: int = MAX_TRAITS
) -> list[Event]:
    """`parse_messages`, with repeated `messageId`s inside the request reduced to their first occurrence."""
    return unique_by_message_id(parse_messages(messages, received_at_ms, max_clock_skew_ms, max_traits))


def parse_messages(
    messages: list[Any], received_at_ms: int, max_clock_skew_ms: int, max_traits: int = MAX_TRAITS
) -> list[Event]:
    """Every message parsed with `engine.events.parse_event` at the receive time, in order (one event per message),
    with the edge's own rules: the device's time corrected by its clock skew and bounded by `received_at_ms +
    max_clock_skew_ms` (`engine.collector.event_time`), control characters stripped from traits (`clean_traits`),
    each event at most `MAX_EVENT_BYTES` of JSON and at most `max_traits` traits (in `traits`, and in
    `context.traits`).

    All or nothing: one bad event raises `400 invalid_events` listing each bad index, reason (`parse_event`'s:
    `bad_timestamp`, `too_deep`, `bad_id`, ...; `too_large`, `too_many_traits`, `not_object`) and detail, and
    nothing is written. Why not accept the good ones: the SDKs drop a batch on any 4xx without telling the caller
    which events failed, while a partial 200 would hide the loss completely; all-or-nothing keeps the failure loud
    and the batch re-sendable once fixed. (The SDKs already refuse events without ids client-side, so this only
    triggers for hand-made or broken clients.)
    """
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            detail = f"each event must be a JSON object, got {type(message).__name__}"
            errors.append({"index": index, "reason": "not_object", "detail": detail})
            continue
        try:
            size: int | None = len(orjson.dumps(message))
        except TypeError:  # nested past orjson's limit, or a value JSON cannot carry: parse_event tells which
            size = None
        if size is not None and size > MAX_EVENT_BYTES:
            detail = f"event is {size} bytes; the limit is 32 KB"
            errors.append({"index": index, "reason": "too_large", "detail": detail})
            continue
        try:
            event = _edge_event(message, received_at_ms, max_clock_skew_ms)
        except InvalidEvent as exc:
            errors.append({"index": index, "reason": exc.reason, "detail": exc.detail})
            continue
        if size is None:  # only reachable with a hand-built dict: JSON bodies decode to what orjson can write
            errors.append({"index": index, "reason": "bad_field", "detail": "event cannot be written as JSON"})
            continue
        context_traits = event.context.get("traits")
        most = max(len(event.traits), len(context_traits) if isinstance(context_traits, dict) else 0)
        if most > max_traits:
            detail = f"event has {most} traits; the limit is {max_traits}"
            errors.append({"index": index, "reason": "too_many_traits", "detail": detail})
            continue
        events.append(event)
    if errors:
        listed = errors[:MAX_LISTED_ERRORS]
        more = f" (first {MAX_LISTED_ERRORS} listed)" if len(errors) > MAX_LISTED_ERRORS else ""
        raise bad_request(
            "invalid_events",
            f"{len(errors)} of {len(messages)} events are invalid{more}; nothing from this request was "
            "accepted. Fix or drop the listed events and send the batch again.",
            errors=listed,
        )
    return events


def _edge_event(message: dict[str, Any], received_at_ms: int, max_clock_skew_ms: int) -> Event:
    event = parse_event(as_device_time(message), received_at_ms=received_at_ms)
    if message.get("messageId") in (None, ""):
        event = dataclasses.replace(event, message_id=synthetic_message_id(_without_per_request_fields(message)))
    return clean_traits(bounded_by_receipt(event, received_at_ms, max_clock_skew_ms))


def _without_per_request_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in _PER_REQUEST_FIELDS}


def strip_control_characters(value: Any) -> Any:
    """`value` with control characters (C0 and C1 but tab, DEL, U+2028, U+2029) removed from every string in it,
    keys included; other values unchanged."""
    if isinstance(value, str):
        return value.translate(_CONTROL_CHARACTERS)
    if isinstance(value, dict):
        return {strip_control_characters(k): strip_control_characters(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_control_characters(v) for v in value]
    return value


def clean_traits(event: Event) -> Event:
    """`event` with control characters stripped from its traits (and `context.traits`, which stand in for them):
    a CR/LF in a name would later break the email header it is written into."""
    traits = strip_control_characters(event.traits)
    context = event.context
    if isinstance(context.get("traits"), dict):
        context = {**context, "traits": strip_control_characters(context["traits"])}
    if traits == event.traits and context is event.context:
        return event
    return dataclasses.replace(event, traits=traits, context=context)


def unique_by_message_id(events: list[Event]) -> list[Event]:
    """`events` without the repeats of a `messageId` (the first occurrence stays)."""
    seen: set[str] = set()
    out: list[Event] = []
    for event in events:
        if event.message_id not in seen:
            seen.add(event.message_id)
            out.append(event)
    return out
