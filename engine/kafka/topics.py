"""Topic names and the records several processes exchange through Kafka, in one place. Records are plain JSON
objects; consumers ignore fields they do not know, so producers may add fields but never rename or drop one."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

# Names without `Settings.topic_prefix` (`settings.topic(name)` adds it).
CLICKSTREAM = "clickstream"  # Segment-spec events; key = lead id (UTF-8), value = JSON (`Event.to_bytes()` or SDK JSON)
ACTIONS = "actions"  # fired actions; key = lead id, value = `Action.to_bytes()`
DELIVERIES = "deliveries"  # one `delivery_record` per delivery outcome from the dispatcher; key = action id
DEAD_LETTERS = "dead-letters"  # `dead_letter_record`s: what could not be processed; key = the original key or none
LEAD_UPDATES = "lead-updates"  # lead lifecycle changes (stage changes, merges, assignments); key = lead id
# Worker-internal, co-partitioned with clickstream (engine.worker.handovers); not in ALL_TOPICS: only the worker
# reads or writes it. Key = the lead the record is addressed to.
IDENTITY_HANDOVERS = "identity-handovers"
# Worker-internal, co-partitioned with clickstream like identity-handovers: erasure and suppression requests, one
# per lead id (engine.privacy.records.WorkerRequest); key = the lead id. Not in ALL_TOPICS.
PRIVACY_REQUESTS = "privacy-requests"
# The privacy pipeline's control topic (engine.privacy.records): receipts from the worker and the sink, the
# coordinator's delete orders to the sink; key = the request id. Not in ALL_TOPICS (the sink subscribes to it
# for its orders, but stores none of it as rows).
PRIVACY = "privacy"
# Rule-set versions (engine.worker.rule_versions): one partition, compacted. `deploy/...` records from
# `nudge rules deploy` / `rollback` (the whole validated rule set), `status/<worker>` records each worker publishes
# with its active version. Not in ALL_TOPICS.
RULES = "rules"

ALL_TOPICS = (CLICKSTREAM, ACTIONS, DELIVERIES, DEAD_LETTERS, LEAD_UPDATES)

DELIVERY_OUTCOMES = ("sent", "retried", "failed", "suppressed", "deferred", "duplicate", "held_out")


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
    """One delivery outcome of an action (`action` is `Action.to_json()`); never carries secrets. An action of an
    experiment passes on its `experiment`, `variant` and `held_out` (the keys are present only then)."""
    if outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"unknown delivery outcome {outcome!r}")
    doc: dict[str, Any] = {
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
    if action.get("experiment") is not None:
        doc["experiment"] = action["experiment"]
        doc["variant"] = action.get("variant")
        doc["held_out"] = bool(action.get("held_out"))
    return orjson.dumps(doc)
