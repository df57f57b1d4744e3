"""Topic names and the records that several processes exchange through Kafka, in one place.

Topics (all prefixed with `Settings.topic_prefix`):
- `clickstream`: Segment-spec events, key = lead id (UTF-8), value = JSON (`Event.to_bytes()` or raw SDK JSON).
- `actions`: fired actions, key = lead id, value = `Action.to_bytes()`.
- `deliveries`: one record per delivery outcome from the dispatcher (`delivery_record`), key = action id.
- `dead-letters`: anything that could not be processed (`dead_letter_record`), key = original key or none.
- `lead-updates`: lead lifecycle changes (stage changes, merges, assignments), key = lead id.
- `identity-handovers`: worker-internal records that move an anonymous lead's state to the known lead it turned
  out to be (engine/worker/handovers.py), key = lead id, co-partitioned with clickstream.

Contract of the records: plain JSON objects with the fields below; consumers ignore fields they do not know, so
producers may add fields but never rename or drop one.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from engine.config import Settings

CLICKSTREAM = "clickstream"
ACTIONS = "actions"
DELIVERIES = "deliveries"
DEAD_LETTERS = "dead-letters"
LEAD_UPDATES = "lead-updates"
IDENTITY_HANDOVERS = "identity-handovers"  # worker-internal, not in ALL_TOPICS: only the worker reads or writes it

ALL_TOPICS = (CLICKSTREAM, ACTIONS, DELIVERIES, DEAD_LETTERS, LEAD_UPDATES)

DELIVERY_OUTCOMES = ("sent", "retried", "failed", "suppressed", "deferred", "duplicate")


def topic_name(settings: Settings, name: str) -> str:
    return settings.topic(name)


def _payload_text(payload: bytes | str | None) -> tuple[str, str]:
    """The original message as text when it is UTF-8, else base64; returns (encoding, text)."""
    if payload is None:
        return "none", ""
    if isinstance(payload, str):
        return "utf-8", payload
    try:
        return "utf-8", payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(payload).decode("ascii")


def dead_letter_record(
    *,
    source: str,
    reason: str,
    detail: str,
    payload: bytes | str | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    key: str | None = None,
    at_ms: int | None = None,
) -> bytes:
    """A dead letter: who rejected it, a stable reason code, a human detail and the original bytes."""
    encoding, text = _payload_text(payload)
    return orjson.dumps(
        {
            "source": source,
            "reason": reason,
            "detail": detail,
            "payload": text,
            "payload_encoding": encoding,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key,
            "at_ms": at_ms if at_ms is not None else int(time.time() * 1000),
        }
    )


def delivery_record(
    *,
    action: dict[str, Any],
    outcome: str,
    attempt: int = 1,
    reason: str = "",
    latency_ms: int | None = None,
    next_attempt_ms: int | None = None,
    at_ms: int | None = None,
) -> bytes:
    """One delivery outcome of an action (`action` is `Action.to_json()`); never carries secrets."""
    if outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"unknown delivery outcome {outcome!r}")
    return orjson.dumps(
        {
            "action_id": action["action_id"],
            "rule": action["rule"],
            "rule_version": action.get("rule_version", ""),
            "lead_id": action["lead_id"],
            "connector": action["connector"],
            "fired_at_ms": action.get("fired_at_ms"),
            "outcome": outcome,
            "attempt": attempt,
            "reason": reason,
            "latency_ms": latency_ms,
            "next_attempt_ms": next_attempt_ms,
            "at_ms": at_ms if at_ms is not None else int(time.time() * 1000),
        }
    )
