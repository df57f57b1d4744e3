"""Request body → validated, normalised `Event`s, all or nothing."""

from __future__ import annotations

from typing import Any

import orjson

from engine.collector.decoding import MAX_EVENT_BYTES
from engine.collector.errors import bad_request
from engine.events import Event, InvalidEvent, parse_event

SINGLE_EVENT_ENDPOINTS = ("track", "page", "screen", "identify", "alias", "group")
MAX_LISTED_ERRORS = 50


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


def normalise(messages: list[Any], received_at_ms: int) -> list[Event]:
    """Every message parsed with `engine.events.parse_event` at the receive time (which normalises event time),
    each at most `MAX_EVENT_BYTES` of JSON; repeated `messageId`s inside the request keep the first occurrence.

    All or nothing: one bad event raises `400 invalid_events` listing each bad index, reason and detail, and
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
        size = len(orjson.dumps(message))
        if size > MAX_EVENT_BYTES:
            errors.append(
                {
                    "index": index,
                    "reason": "too_large",
                    "detail": f"event is {size} bytes; the limit is 32 KB",
                }
            )
            continue
        try:
            events.append(parse_event(message, received_at_ms=received_at_ms))
        except InvalidEvent as exc:
            errors.append({"index": index, "reason": exc.reason, "detail": exc.detail})
    if errors:
        listed = errors[:MAX_LISTED_ERRORS]
        more = f" (first {MAX_LISTED_ERRORS} listed)" if len(errors) > MAX_LISTED_ERRORS else ""
        raise bad_request(
            "invalid_events",
            f"{len(errors)} of {len(messages)} events are invalid{more}; nothing from this request was "
            "accepted. Fix or drop the listed events and send the batch again.",
            errors=listed,
        )
    return unique_by_message_id(events)


def unique_by_message_id(events: list[Event]) -> list[Event]:
    seen: set[str] = set()
    out: list[Event] = []
    for event in events:
        if event.message_id not in seen:
            seen.add(event.message_id)
            out.append(event)
    return out
