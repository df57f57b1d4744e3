"""Kafka plumbing of the benchmark: create topics, load a workload, read the raw consume rate, watch outputs.

Contract:
- `create_topic` makes a topic with the given partitions (idempotent: an existing topic is kept).
- `produce` sends every record (keyed by lead, so the default partitioner places a lead's events on one
  partition, as the collector does) and returns when the broker has acknowledged all of them. Records go out
  in large batches: the producer is not what is measured.
- `produce_paced` sends at a fixed offered rate, stamping each event with the wall clock as it is sent.
- `raw_consume` is measurement (1): a plain aiokafka consumer reading and orjson-decoding the topic.
- `output_watcher` reads output topics from the beginning in the background (`engine.testing.TopicReader`) and
  records the wall-clock arrival time of every record, for latency figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.workload import Record, restamp
from engine.kafka.partitioner import default_partition
from engine.testing import TopicReader
from engine.worker.faust_ext.batched_output import send_in_batches

MIB = 1024 * 1024


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def _producer(bootstrap: str, linger_ms: int = 20) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, max_batch_size=MIB, max_request_size=8 * MIB
    )


async def produce(bootstrap: str, topic: str, records: Sequence[Record], window: int = 20_000) -> float:
    """Send all records; returns the produce rate (records/s) for the report."""
    producer = _producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    try:
        for start in range(0, len(records), window):
            futures = [
                await producer.send(topic, value=r.value, key=r.key) for r in records[start : start + window]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records) / max(1e-9, time.perf_counter() - started)


async def produce_backlog(
    bootstrap: str, topic: str, records: Iterable[Record], partitions: int, window: int = 50_000
) -> dict[str, float]:
    """Send `records` (any number, e.g. `workload.laps(...)`) as closed produce batches per partition (Kafka's
    default key partitioner, as any producer keyed by lead), acknowledged before returning; returns
    {records, valid, seconds, events_per_s}. Runs while nothing is measured: it only has to be quick."""
    producer = _producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    sent = valid = 0
    try:
        chunk: list[Record] = []

        async def flush() -> None:
            by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
            for record in chunk:
                partition = default_partition(record.key, partitions) if record.key is not None else 0
                by_partition.setdefault(partition, []).append((record.key, record.value))
            futures = []
            for partition, batch_records in by_partition.items():
                futures.extend(await send_in_batches(producer, topic, partition, batch_records))
            await asyncio.gather(*futures)
            chunk.clear()

        for record in records:
            chunk.append(record)
            sent += 1
            valid += record.valid
            if len(chunk) >= window:
                await flush()
        if chunk:
            await flush()
    finally:
        await producer.stop()
    seconds = time.perf_counter() - started
    return {"records": sent, "valid": valid, "seconds": round(seconds, 2), "events_per_s": round(sent / seconds)}


@dataclass
class PacedRun:
    sent: int
    offered_rate: float
    achieved_rate: float
    started_wall_ms: int
    ended_wall_ms: int


async def produce_paced(
    bootstrap: str, topic: str, records: Sequence[Record], rate: float, tick_s: float = 0.01
) -> PacedRun:
    """Send `records` at `rate` per second in small steps, each stamped with the wall clock when sent.

    Each step goes out as one produce batch per partition (Kafka's default key partitioner, as any producer
    keyed by lead): on a 2-core machine a per-record `send` cost the load generator half a core at 5k
    events/s, CPU the measured worker and the broker then did not get."""
    producer = _producer(bootstrap, linger_ms=1)
    await producer.start()
    partitions = len(await producer.partitions_for(topic))
    started = time.perf_counter()
    started_wall = int(time.time() * 1000)
    sent = 0
    pending: list[asyncio.Future[object]] = []
    try:
        while sent < len(records):
            due = min(len(records), int((time.perf_counter() - started) * rate) + 1)
            now_ms = int(time.time() * 1000)
            by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
            for record in records[sent:due]:
                value = restamp(record.value, now_ms) if record.valid else record.value
                partition = default_partition(record.key, partitions) if record.key is not None else 0
                by_partition.setdefault(partition, []).append((record.key, value))
            for partition, batch_records in by_partition.items():
                pending.extend(await send_in_batches(producer, topic, partition, batch_records))
            sent = due
            if len(pending) > 500:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(tick_s)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    return PacedRun(sent, rate, sent / max(1e-9, elapsed), started_wall, int(time.time() * 1000))


async def raw_consume(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0
) -> dict[str, float]:
    """Measurement (1): read `expected` records from the beginning and decode each valid one with orjson."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * MIB,
        fetch_max_bytes=32 * MIB,
    )
    await consumer.start()
    seen = decoded = 0
    first: float | None = None
    cpu_first = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for messages in batches.values():
                if first is None and messages:
                    first, cpu_first = time.perf_counter(), time.process_time()
                for message in messages:
                    seen += 1
                    with contextlib.suppress(orjson.JSONDecodeError):
                        orjson.loads(message.value)
                        decoded += 1
        elapsed = time.perf_counter() - (first or time.perf_counter())
        cpu = time.process_time() - cpu_first
    finally:
        await consumer.stop()
    return {
        "records": seen,
        "decoded": decoded,
        "seconds": round(elapsed, 3),
        "events_per_s": round(seen / max(1e-9, elapsed)),
        "cpu_s_per_1k": round(cpu / max(1, seen) * 1000, 4),
    }


class RawReader:
    """Measurement (1) as a steady state: a plain aiokafka consumer reading `topic` and orjson-decoding every
    record, from the beginning and again from the beginning when it has caught up, until `stop()`; `seen` counts
    the records read. Runs in this process (its CPU is `time.process_time()`)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.seen = self.decoded = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * MIB,
            fetch_max_bytes=32 * MIB,
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                if not any(batches.values()):
                    await consumer.seek_to_beginning()
                    continue
                for messages in batches.values():
                    for message in messages:
                        self.seen += 1
                        with contextlib.suppress(orjson.JSONDecodeError):
                            orjson.loads(message.value)
                            self.decoded += 1
        finally:
            await consumer.stop()

    def check_alive(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # raises what stopped it
            raise RuntimeError("raw reader stopped")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def output_watcher(bootstrap: str, topics: Sequence[str]) -> TopicReader:
    """A reader of `topics` whose records carry their wall-clock arrival (`arrived_ms`); use as `async with`."""
    return TopicReader(bootstrap, topics, poll_ms=100, fetch_max_wait_ms=20)  # latency matters, not throughput
