"""Identity hand-over records on the worker-internal `identity-handovers` topic: co-partitioned with `clickstream`
and read by the same worker input, so each is handled in order with the events of the partition that holds the
addressed lead's state. JSON objects keyed by the lead they are addressed to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


class BadHandoverRecord(ValueError):
    """An `identity-handovers` record that is not one of ours."""


@dataclass(frozen=True, slots=True)
class Handover:
    """Give this (anonymous) lead's state to `to_lead`."""

    to_lead: str


@dataclass(frozen=True, slots=True)
class MergeIn:
    """Fold `state` (the serialized state of `from_lead`) into this lead's state."""

    from_lead: str
    state: bytes


HandoverRecord = Handover | MergeIn


def handover_record(anonymous_id: str, known_id: str) -> bytes:
    """`{"op": "handover", "lead_id": <anonymous id>, "to": <known id>}`: an `identify` or `alias` showed that the
    anonymous lead is the known one; its state leaves its partition (deleted there) and travels to the known lead
    in a merge record. Sent with the key's default partitioner, like clickstream."""
    return orjson.dumps({"op": "handover", "lead_id": anonymous_id, "to": known_id})


def merge_record(known_id: str, anonymous_id: str, state: bytes) -> bytes:
    """`{"op": "merge", "lead_id": <known id>, "from": <anonymous id>, "state": <LeadState JSON>}`: fold this state
    into the known lead's (`LeadState.merge`: carts unite, scores add, the earlier absence episode stays)."""
    return orjson.dumps(
        {"op": "merge", "lead_id": known_id, "from": anonymous_id, "state": orjson.Fragment(state)}
    )


def parse_handover_record(raw: bytes | None) -> tuple[str, HandoverRecord]:
    """(addressed lead, what to do) from an `identity-handovers` record; anything but the two records above
    (including tick records of earlier versions) raises `BadHandoverRecord`, which the worker dead-letters."""
    try:
        doc: Any = orjson.loads(raw or b"")
        op = doc.get("op")
        lead_id = str(doc["lead_id"])
        if op == "handover":
            return lead_id, Handover(str(doc["to"]))
        if op == "merge":
            return lead_id, MergeIn(str(doc["from"]), orjson.dumps(doc["state"]))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BadHandoverRecord(f"not an identity hand-over record ({exc!r})") from None
    raise BadHandoverRecord(f"unknown hand-over op {op!r}")
