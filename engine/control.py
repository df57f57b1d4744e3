"""Worker-internal control records on the `timers` topic (co-partitioned with `clickstream`, read by the same
agent, so each is handled inside stream iteration on the partition that holds the lead's state).

Records are JSON objects keyed by the lead they are addressed to:
- tick `{"op": "tick", "lead_id", "now_ms", "deadline_ms"}`: event time reached `now_ms` for this lead; fire
  what is due (`Tick(now_ms)`). Sent by the deadline timer to the partition of the lead's state.
- hand-over `{"op": "handover", "lead_id": <anonymous id>, "to": <known id>}`: an `identify` or `alias` showed
  that the anonymous lead is the known one; the anonymous lead's state leaves its partition (deleted there)
  and travels to the known lead in a merge record. Sent with the key's default partitioner, like clickstream.
- merge `{"op": "merge", "lead_id": <known id>, "from": <anonymous id>, "state": <LeadState JSON>}`: fold this
  state into the known lead's (`LeadState.merge`: carts unite, scores add, the earlier absence episode stays).

A record without `op` is a tick (the first format). Anything else raises `BadControl` (dead-lettered).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from engine.core.model import Tick


class BadControl(ValueError):
    """A `timers` record that is not one of ours."""


@dataclass(frozen=True, slots=True)
class Handover:
    """Give this (anonymous) lead's state to `to_lead`."""

    to_lead: str


@dataclass(frozen=True, slots=True)
class MergeIn:
    """Fold `state` (the serialized state of `from_lead`) into this lead's state."""

    from_lead: str
    state: bytes


Control = Tick | Handover | MergeIn


def tick_record(lead_id: str, now_ms: int, deadline_ms: int) -> bytes:
    return orjson.dumps({"op": "tick", "lead_id": lead_id, "now_ms": now_ms, "deadline_ms": deadline_ms})


def handover_record(anonymous_id: str, known_id: str) -> bytes:
    return orjson.dumps({"op": "handover", "lead_id": anonymous_id, "to": known_id})


def merge_record(known_id: str, anonymous_id: str, state: bytes) -> bytes:
    return orjson.dumps(
        {"op": "merge", "lead_id": known_id, "from": anonymous_id, "state": orjson.Fragment(state)}
    )


def parse_control(raw: bytes | None) -> tuple[str, Control, int | None]:
    """(addressed lead, what to do, the deadline a tick was sent for) from a `timers` record."""
    try:
        doc: Any = orjson.loads(raw or b"")
        op = doc.get("op", "tick")
        lead_id = str(doc["lead_id"])
        if op == "tick":
            return lead_id, Tick(int(doc["now_ms"])), int(doc["deadline_ms"])
        if op == "handover":
            return lead_id, Handover(str(doc["to"])), None
        if op == "merge":
            return lead_id, MergeIn(str(doc["from"]), orjson.dumps(doc["state"])), None
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BadControl(f"timers record is not a control record ({exc!r})") from None
    raise BadControl(f"unknown control op {op!r}")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), unsigned 32-bit. aiokafka's version reads
    byte by byte; this one reads 4-byte words at once, ~3x faster on the worker's hand-over path."""
    m = 0x5BD1E995
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = words * 4
    extra = length - tail
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def default_partition(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as aiokafka and the Java client) gives `key`: where
    clickstream producers put the lead's events, and so where its state lives."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
