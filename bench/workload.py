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
_ID_FIELD = b'"messageId":"'
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


def relap(record: Record, lap: int, shift_ms: int) -> Record:
    """`record` as it comes back `lap` times `shift_ms` later: timestamp moved, messageId made unique per lap (its
    first 8 hex digits replaced by the lap number), same key. Lap 0 is the record itself."""
    if lap == 0 or not record.valid:
        return record
    at_ms = record.timestamp_ms + lap * shift_ms
    value = restamp(record.value, at_ms)
    at = value.find(_ID_FIELD)
    if at >= 0:
        start = at + len(_ID_FIELD)
        value = value[:start] + f"{lap:08x}".encode() + value[start + 8 :]
    return Record(record.key, value, at_ms, True)


def laps(workload: Workload, events: int, gap_ms: int = 3_600_000) -> Iterator[Record]:
    """`events` records: the workload, then the same leads again with later timestamps (`relap`), as often as
    needed. A backlog sized by time on the machine at hand (not by a fixed count) keeps the lead count fixed."""
    if not workload.records:
        return
    span = workload.records[-1].timestamp_ms - workload.records[0].timestamp_ms
    shift = span + gap_ms
    n = 0
    lap = 0
    while True:
        for record in workload.records:
            if n >= events:
                return
            yield relap(record, lap, shift)
            n += 1
        lap += 1


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


DAY_MS = 86_400_000


def journey_heavy(leads: int = 50_000, seed: int = 11, first_lead: int = 0, span_days: int = 7) -> Workload:
    """A workload that drives the shipped journeys (rules/onboarding, nurture, winback, referral) hard: every lead
    enters one. A third are SaaS sign-ups (half create a project within 0.2-2.5 days), a third B2B content
    downloads (pricing visits over the next days, some book a demo), a third shop orders (emails opened, some
    order again within a month: winback exits, referral's second order). Starts spread over `span_days` of event
    time, so the journeys' waits (1-7 days) fall due while the backlog is consumed. Seeded like `generate`."""
    from examples.generate_clickstream import PRODUCTS, Visitor

    rng = random.Random(seed)
    timed: list[tuple[int, int, Record]] = []
    mix: Counter[str] = Counter()
    start = BASE_MS

    def add(visitor: Visitor, doc: dict[str, Any]) -> None:
        lead = doc.get("userId") or doc.get("anonymousId")
        timed.append((visitor.t, len(timed), Record(str(lead).encode(), orjson.dumps(doc), visitor.t, True)))
        mix[_label(doc)] += 1

    def later(visitor: Visitor, low_days: float, high_days: float) -> None:
        visitor.t += int(rng.uniform(low_days, high_days) * DAY_MS)

    for n in range(first_lead, first_lead + leads):
        visitor = Visitor(rng, n, start + int(rng.uniform(0, span_days) * DAY_MS))
        if visitor.user_id is None:
            visitor.user_id = f"u{n:05d}"
        add(visitor, visitor.identify())
        kind = n % 3
        if kind == 0:
            visitor.step()
            add(visitor, visitor.track("Signed Up", {"plan": "trial"}, "/signup"))
            if rng.random() < 0.5:
                later(visitor, 0.2, 2.5)
                add(visitor, visitor.track("Project Created", {"template": "blank"}, "/app/projects"))
            later(visitor, 0.1, 1.0)
            add(visitor, visitor.page("Home", "/"))
        elif kind == 1:
            visitor.step()
            add(visitor, visitor.track("Content Downloaded", {"asset": "guide"}, "/resources/guide"))
            for _ in range(rng.randint(1, 3)):
                later(visitor, 0.5, 3.0)
                add(visitor, visitor.page("Pricing", "/pricing"))
            if rng.random() < 0.3:
                visitor.step()
                add(visitor, visitor.track("Demo Requested", {}, "/demo"))
        else:
            product = rng.choice(PRODUCTS)
            visitor.step()
            order = {"order_id": f"ord-{n:05d}", "revenue": product[2], "currency": "USD",
                     "products": [{"product_id": product[0], "price": product[2], "quantity": 1}]}
            add(visitor, visitor.track("Order Completed", order, "/checkout/done"))
            if rng.random() < 0.5:
                later(visitor, 1.0, 6.0)
                add(visitor, visitor.track("Email Opened", {"campaign": "winback"}, "/"))
            if rng.random() < 0.4:
                later(visitor, 2.0, 20.0)
                add(visitor, visitor.track("Order Completed", {**order, "order_id": f"ord-{n:05d}-2"},
                                           "/checkout/done"))
    timed.sort(key=lambda item: (item[0], item[1]))
    return Workload([record for _, _, record in timed], leads, seed, dict(mix))


def one_event_per_lead(leads: int, first_lead: int = 0, seed: int = 13, end_ms: int | None = None) -> Iterator[Record]:
    """`leads` records, one `Product Viewed` per lead (`s<n>` user ids, fresh message ids, 1 ms apart in event
    time, the last at `end_ms`, default now): the cheapest way to give a worker state for a million leads (each
    view also schedules the browse-abandonment deadline, as live traffic does). Recent timestamps matter: after a
    restart an idle partition's clock follows the wall clock, and old events' deadlines would all fall due then.
    Generated lazily, ~3 µs a record."""
    import time

    rng = random.Random(seed)
    end = int(time.time() * 1000) if end_ms is None else end_ms
    for n in range(first_lead, first_lead + leads):
        at_ms = end - (first_lead + leads - 1 - n)
        doc = {
            "type": "track", "event": "Product Viewed",
            "messageId": f"{rng.getrandbits(64):016x}-{n:012d}", "timestamp": format_ts(at_ms),
            "userId": f"s{n:07d}",
            "properties": {"product_id": "P-100", "sku": "P-100", "name": "Trail Shoe", "price": 89.0,
                           "category": "shoes", "currency": "USD"},
            "context": {"page": {"path": "/p/P-100"}},
        }
        yield Record(doc["userId"].encode(), orjson.dumps(doc), at_ms, True)
