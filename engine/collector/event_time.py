"""Event time at the edge: a device's clock corrected by its skew, then bounded by the collector's own clock.

Applied exactly once, here: records on `clickstream` carry the corrected `timestamp`, and `engine.events.parse_event`
takes a `timestamp` as it is everywhere downstream (producers writing to Kafka directly are trusted)."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.events import Event, parse_ts


def as_device_time(message: dict[str, Any]) -> dict[str, Any]:
    """The message with the device's event time moved to `originalTimestamp`, so `parse_event` derives the event
    time from it, corrected by the device's clock skew when the message has `sentAt` (Segment's rule:
    `timestamp = receivedAt - (sentAt - originalTimestamp)`).

    The device's time is `timestamp` when sent (what the SDKs send), else `originalTimestamp`; a message with
    both keeps `timestamp` as the device's time (its `originalTimestamp` is still validated, then replaced).
    `message` is not modified."""
    device_time = message.get("timestamp")
    if device_time is None or device_time == "":
        return message
    if message.get("originalTimestamp") not in (None, ""):
        parse_ts(message["originalTimestamp"], "originalTimestamp")  # every timestamp field is validated
    edge = dict(message)
    del edge["timestamp"]
    edge["originalTimestamp"] = device_time
    return edge


def bounded_by_receipt(event: Event, received_at_ms: int, max_clock_skew_ms: int) -> Event:
    """`event` with its time clamped to at most `received_at_ms + max_clock_skew_ms`: an event cannot have
    happened after the collector received it, so a device clock running fast (without `sentAt` to correct it,
    or with a wrong one) can never stamp an event into the future and move a partition's event-time clock, and
    with it other leads' deadlines. Late events (a slow clock, an offline queue) are left as they are."""
    latest = received_at_ms + max_clock_skew_ms
    if event.timestamp_ms <= latest:
        return event
    return dataclasses.replace(event, timestamp_ms=latest)
