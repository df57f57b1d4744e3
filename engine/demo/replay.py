"""Replay a recorded clickstream into the `clickstream` topic in (compressed) real time, rebased to now.

Contract:
- `load_sample(path)` reads a JSON-lines file (gzipped when it ends in `.gz`) into `SampleRecord`s, in file
  order. Lines that are not valid events are kept as they are: the worker must dead-letter them, and the demo
  shows that it does.
- `Replayer.run()` shifts every event's `timestamp` so the first one is "now + lead-in", then sends each
  record when the wall clock reaches its new time (so deadlines fall due while the demo runs), keyed by lead
  id (`userId`, else `anonymousId`; none for a line without either). It returns the next offset per partition
  (from the produce acknowledgements, not from ListOffsets, which Tansu answers wrongly), so the caller can
  tell when a consumer has read everything.
- Backpressure: `send` waits when the producer's buffer is full; pacing never runs ahead of the wall clock.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from engine.events import format_ts, parse_ts


@dataclass(frozen=True, slots=True)
class SampleRecord:
    at_ms: int | None  # event time in the recording; None for a line without a usable timestamp
    key: bytes | None
    doc: dict | None  # the decoded event, or None for a line that is not a JSON object
    raw: bytes


def _decode(line: bytes) -> SampleRecord:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return SampleRecord(None, None, None, line)
    if not isinstance(doc, dict):
        return SampleRecord(None, None, None, line)
    lead = doc.get("userId") or doc.get("anonymousId")
    key = str(lead).encode() if lead else None
    try:
        at_ms = parse_ts(doc.get("timestamp"))
    except ValueError:  # InvalidEvent is a ValueError: leave the bad timestamp for the worker to reject
        at_ms = None
    return SampleRecord(at_ms, key, doc, line)


def load_sample(path: Path) -> list[SampleRecord]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [_decode(line) for line in data.splitlines() if line.strip()]


@dataclass
class Replayer:
    """Sends `records` to `topic` at their rebased times; counts what it sent for the progress line.

    `first_ms` and `span_ms` describe the recording (earliest event time, and from it to the latest);
    `shift_ms` is what `run()` added to every event time."""

    bootstrap: str
    topic: str
    records: list[SampleRecord]
    lead_in_ms: int = 1000
    clock: Callable[[], float] = time.time
    sent: int = field(default=0, init=False)
    shift_ms: int = field(default=0, init=False)
    first_ms: int = field(init=False)
    span_ms: int = field(init=False)

    def __post_init__(self) -> None:
        times = [r.at_ms for r in self.records if r.at_ms is not None]
        self.first_ms = min(times) if times else 0
        self.span_ms = (max(times) - self.first_ms) if times else 0

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def rebased(self, record: SampleRecord, last_ms: int) -> tuple[int, bytes]:
        """(send time, bytes): events move by the shift; a line without a time goes with its neighbour."""
        if record.at_ms is None or record.doc is None:
            return last_ms, record.raw
        at_ms = record.at_ms + self.shift_ms
        return at_ms, orjson.dumps({**record.doc, "timestamp": format_ts(at_ms)})

    async def run(self) -> dict[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        ends: dict[int, int] = {}
        pending: list[asyncio.Future] = []
        try:
            self.shift_ms = self._now_ms() + self.lead_in_ms - self.first_ms
            last_ms = self.first_ms + self.shift_ms
            for record in self.records:
                send_at, value = self.rebased(record, last_ms)
                last_ms = send_at
                wait_ms = send_at - self._now_ms()
                if wait_ms > 0:
                    await asyncio.sleep(wait_ms / 1000)
                pending.append(await producer.send(self.topic, value, key=record.key))
                self.sent += 1
            for metadata in await asyncio.gather(*pending):
                ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
        finally:
            await producer.stop()
        return ends
