"""The seeded benchmark workload: Segment events of a busy web store, keyed by lead, as Kafka records.

Contract: `generate(events, leads, seed)` always returns the same records in the same order for the same
arguments. Visitors come from the sample generator in `examples/generate_clickstream.py` (imported, not
copied): browsers, cart abandoners, buyers, checkout abandoners and B2B visitors re-reading the pricing page,
80% identified. Each visitor's session is cut short at a seeded point until the total is `events`, so the mix
keeps every behaviour but averages `events / leads` events per lead (visitors who leave early are realistic:
that is what abandonment rules are for). Timestamps are stretched `time_scale` times from the sample's
one-minute span (default: one hour of event time, tens of seconds between a visitor's steps), so
abandonment deadlines fall due while the stream is processed. A few malformed records (not JSON, no lead id,
bad timestamp) are kept: the worker must dead-letter them, and they cost what bad input costs.

`restamp(value, ms)` rewrites an event's timestamp in place (fixed-width ISO-8601), so the latency run can
send the same events stamped with the wall clock without decoding them.
"""

from __future__ import annotations

import pickle
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.events import format_ts, parse_ts
from examples.generate_clickstream import BASE_TIME, malformed, session

BASE_MS = int(BASE_TIME.timestamp() * 1000)
_TS_FIELD = b'"timestamp":"'
_TS_WIDTH = len(format_ts(BASE_MS))  # "2026-01-15T10:00:00.000Z": 24 bytes


@dataclass(frozen=True)
class Record:
    """One clickstream record: key = lead id (None for input that has none), value = the raw JSON."""

    key: bytes | None
    value: bytes
    timestamp_ms: int
    valid: bool  # False for the deliberately malformed ones (they become dead letters)


@dataclass(frozen=True)
class Workload:
    records: list[Record]
    leads: int
    seed: int
    mix: dict[str, int] = field(default_factory=dict)  # event name (or page name / type) -> count

    @property
    def valid(self) -> int:
        """Events a worker counts as consumed (malformed ones are dead-lettered instead)."""
        return sum(1 for r in self.records if r.valid)

    def head(self, events: int) -> Workload:
        """The first `events` records (by time): a shorter run over the same stream."""
        return Workload(self.records[:events], self.leads, self.seed, self.mix)

    def describe(self) -> dict[str, object]:
        return {
            "events": len(self.records),
            "valid_events": self.valid,
            "leads": self.leads,
            "seed": self.seed,
            "bytes": sum(len(r.value) for r in self.records),
            "mix": dict(sorted(self.mix.items(), key=lambda kv: -kv[1])),
        }


def _label(doc: dict[str, Any]) -> str:
    if doc.get("type") == "track":
        return str(doc.get("event"))
    if doc.get("type") == "page":
        return f"page:{doc.get('name')}"
    return str(doc.get("type"))


def restamp(value: bytes, timestamp_ms: int) -> bytes:
    """`value` with its `timestamp` replaced (for records from `generate`: fixed-width timestamps)."""
    at = value.find(_TS_FIELD)
    if at < 0:
        return value
    start = at + len(_TS_FIELD)
    return value[:start] + format_ts(timestamp_ms).encode() + value[start + _TS_WIDTH :]


def _trim(sessions: list[list[tuple[int, dict[str, Any]]]], target: int, rng: random.Random) -> None:
    """Cut sessions short (never below 2 events) until they hold `target` events in total."""
    excess = sum(len(s) for s in sessions) - target
    cuttable = [i for i, s in enumerate(sessions) if len(s) > 2]
    while excess > 0 and cuttable:
        slot = rng.randrange(len(cuttable))
        victim = sessions[cuttable[slot]]
        victim.pop()
        excess -= 1
        if len(victim) <= 2:
            cuttable[slot] = cuttable[-1]
            cuttable.pop()


def generate(
    events: int = 200_000,
    leads: int = 50_000,
    seed: int = 7,
    first_lead: int = 0,
    time_scale: float = 60.0,
    malformed_count: int = 12,
) -> Workload:
    """`events` records over `leads` visitors numbered from `first_lead` (see the module docstring)."""
    rng = random.Random(seed)
    sessions = [list(_timed(session(rng, first_lead + n), time_scale)) for n in range(leads)]
    _trim(sessions, events - malformed_count, random.Random(seed + 1))
    timed: list[tuple[int, int, Record]] = []
    mix: Counter[str] = Counter()
    for visits in sessions:
        for at_ms, doc in visits:
            lead = doc.get("userId") or doc.get("anonymousId")
            record = Record(str(lead).encode(), orjson.dumps(doc), at_ms, True)
            timed.append((at_ms, len(timed), record))
            mix[_label(doc)] += 1
    for at_ms, raw in malformed(rng, malformed_count):
        at_ms = BASE_MS + int((at_ms - BASE_MS) * time_scale)
        timed.append((at_ms, len(timed), Record(None, raw, at_ms, False)))
        mix["malformed"] += 1
    timed.sort(key=lambda item: (item[0], item[1]))
    return Workload([record for _, _, record in timed], leads, seed, dict(mix))


def _timed(docs: Iterable[dict[str, Any]], time_scale: float) -> Iterator[tuple[int, dict[str, Any]]]:
    for doc in docs:
        at_ms = BASE_MS + int((parse_ts(doc["timestamp"]) - BASE_MS) * time_scale)
        doc["timestamp"] = format_ts(at_ms)
        yield at_ms, doc


def cached(cache_dir: Path | None, **params: Any) -> Workload:
    """`generate(**params)`, kept in `cache_dir` between runs (generating 200k events takes ~15 s of CPU)."""
    if cache_dir is None:
        return generate(**params)
    name = "workload-" + "-".join(f"{k}{v}" for k, v in sorted(params.items())) + ".pickle"
    path = cache_dir / name
    if path.exists():
        with path.open("rb") as handle:
            return pickle.load(handle)  # our own file, written below
    workload = generate(**params)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        pickle.dump(workload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return workload
