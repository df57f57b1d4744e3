"""The worker's output: one produce batch per (topic, partition) per input batch, and table writes that go out in
it. Why not Faust's send path (`topic.send`, `table[key] = value`): a future message, the producer buffer queue, a
sensor call and an aiokafka future per record were the largest cost after message delivery (bench/FINDINGS.md)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from engine import metrics
from engine.kafka.partitioner import default_partition

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]
SLOW_ACK_WARNING_S = 5.0  # an output flush waiting this long for the broker is logged (and again after as long)


class OutputBatch:
    """Records queued while one input batch is processed, handed to the app's aiokafka producer in one go.

    Ordering: records of one (topic, partition) are produced in the order they were queued. Without an explicit
    partition the key picks it with Kafka's default partitioner (murmur2), as Faust's and aiokafka's producers
    do, so keyed records land where other producers of the same keys put theirs. Records of topics marked
    `send_last` (the state changelog) are sent only once the broker has acknowledged every other record of the
    same flush: a crash in between loses the new state, never what the state says was done.

    Commit: `flush()` returns once the broker acknowledged everything; only then may the input batch count as
    processed (`WorkerInput.processed`). `flush_in_background(then)` takes what is queued at once and returns a
    task that sends it and calls `then()` after the acknowledgements, so the caller can evaluate the next input
    batch meanwhile (records queued from now on belong to the next flush). Flushes never overlap: each one
    starts sending only after the one before it was acknowledged, so a key's changelog records land in the order
    they were written, and `flush()` also waits for every flush started before it.

    Errors: a batch the broker finally rejects is counted in `OUTPUT_ERRORS` and `flush()` raises `OutputError`:
    the worker stops rather than commit input whose output is lost. Not thread-safe; one event loop.
    """

    def __init__(self, producer: Any) -> None:
        """`producer`: the app's Faust producer (its aiokafka producer is what Faust flushes before commits)."""
        self._producer = producer
        self._pending: dict[tuple[str, int | None], list[Record]] = {}
        self._last_topics: set[str] = set()
        self.in_flight: asyncio.Task[None] | None = None  # the latest flush started (done or not)

    @property
    def queued(self) -> bool:
        """Whether records were queued since the last flush started (what a flush now would send)."""
        return bool(self._pending)

    def send_last(self, topic: str) -> None:
        """From now on, records of `topic` go out after all other records of their flush are acknowledged."""
        self._last_topics.add(topic)

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Queue a record (`value=None`: a tombstone); nothing is sent before `flush()`. Does not block."""
        records = self._pending.get((topic, partition))
        if records is None:
            records = self._pending[(topic, partition)] = []
        records.append((key, value))

    async def flush(self) -> None:
        """Send every queued record, grouped by (topic, partition), as few produce batches as the producer's
        `max_batch_size` allows (the Tansu dev profile needs one record per batch, see `broker_profiles`), and
        wait for the broker's acknowledgements: first of all topics not marked `send_last`, then of those. Blocks
        while the producer's buffer is full (back-pressure), for a topic first written while its metadata is
        fetched, and until earlier flushes are acknowledged. Raises `OutputError` when the broker refused a batch
        (of this flush or of one before it)."""
        await self.flush_in_background()

    def flush_in_background(self, then: Callable[[], None] | None = None) -> asyncio.Task[None]:
        """Take every queued record now and return the task that sends it as `flush()` does, once the flush
        before it is acknowledged, then calls `then()`. The task raises `OutputError` (and `then` is not
        called) when this flush or one before it failed."""
        pending, self._pending = self._pending, {}
        self.in_flight = asyncio.ensure_future(self._send_after(self.in_flight, pending, then))
        return self.in_flight

    async def _send_after(
        self,
        previous: asyncio.Task[None] | None,
        pending: dict[tuple[str, int | None], list[Record]],
        then: Callable[[], None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.shield(previous)  # cancelling this flush (its waiter stops) must not cancel the one before
        if pending:
            await self._send(pending)
        if then is not None:
            then()

    async def _send(self, pending: dict[tuple[str, int | None], list[Record]]) -> None:
        producer = self._producer._ensure_producer()
        first: dict[tuple[str, int], list[Record]] = {}
        last: dict[tuple[str, int], list[Record]] = {}
        for (topic, partition), records in pending.items():
            by_partition = last if topic in self._last_topics else first
            if partition is not None:
                by_partition.setdefault((topic, partition), []).extend(records)
                continue
            await producer.client._wait_on_metadata(topic)
            count = len(producer.client.cluster.partitions_for_topic(topic) or ()) or 1
            for key, value in records:
                chosen = default_partition(key, count) if key is not None else 0
                by_partition.setdefault((topic, chosen), []).append((key, value))
        for group in (first, last):
            deliveries: list[asyncio.Future[Any]] = []
            for (topic, partition), records in group.items():
                for delivery in await send_in_batches(producer, topic, partition, records):
                    delivery.add_done_callback(functools.partial(_report, topic=topic, partition=partition))
                    deliveries.append(delivery)
            if deliveries:
                results = await acknowledged(deliveries, sorted(group))
                failed = [result for result in results if isinstance(result, BaseException)]
                if failed:
                    raise OutputError(f"{len(failed)} output batch(es) refused by the broker: {failed[0]!r}")


async def acknowledged(deliveries: list[asyncio.Future[Any]], partitions: list[tuple[str, int]]) -> list[Any]:
    """The deliveries' results (exceptions included), once all are settled. A broker that holds back an
    acknowledgement holds up the whole worker (the next batch waits for this flush): every
    `SLOW_ACK_WARNING_S` that passes without it is logged, naming the partitions written."""
    gathered = asyncio.gather(*deliveries, return_exceptions=True)
    waited = 0.0
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(gathered), SLOW_ACK_WARNING_S)
        except TimeoutError:
            waited += SLOW_ACK_WARNING_S
            pending = sum(1 for delivery in deliveries if not delivery.done())
            log.warning("output not acknowledged after %.0f s: %d of %d produce batches pending, partitions %s",
                        waited, pending, len(deliveries), partitions[:20])
        except asyncio.CancelledError:
            gathered.cancel()
            raise


class OutputError(RuntimeError):
    """The broker refused part of a flush: the input that produced it must not count as processed."""


async def send_in_batches(
    producer: Any, topic: str, partition: int, records: Sequence[Record]
) -> list[asyncio.Future[Any]]:
    """Hand `records` to an aiokafka producer as closed produce batches for one partition, as few as the
    producer's `max_batch_size` allows; returns their delivery futures. Closed: a complete batch is sent at
    once, not after the producer's linger (which would also hold up the next batch for the partition)."""
    deliveries = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            batch.close()
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record
    batch.close()
    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
    return deliveries


class TableWriter:
    """Writes to a Faust table's store and queues each write's changelog record in an `OutputBatch`.

    The changelog record is produced when the output batch is flushed, with the rest of the batch's output
    (see `OutputBatch` for commit semantics). Recovery is Faust's own: it reads the changelog into the store on
    start and after a rebalance, unchanged.
    """

    def __init__(self, table: Any, output: OutputBatch) -> None:
        self._table = table
        self._output = output
        self._changelog_topic = table.changelog_topic.get_topic_name()
        # The state goes out after what it caused (actions, hand-overs, dead letters): see `OutputBatch`.
        output.send_last(self._changelog_topic)

    def get(self, key: bytes) -> Any:
        """The stored value of `key` (None when absent), including writes not flushed yet."""
        return self._table.data.get(key)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """The store holds `value` for `key` at once (later reads in the same batch see it); `value=None` deletes
        the key and queues a tombstone. `partition` is the partition of the input that changed the key: the
        table is co-partitioned with its source topics, as Faust's own write path assumes."""
        store = self._table.data
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
        self._output.send(self._changelog_topic, key, value, partition)


def _report(delivery: asyncio.Future[Any], topic: str, partition: int) -> None:
    if delivery.cancelled():
        return
    exc = delivery.exception()
    if exc is not None:
        metrics.OUTPUT_ERRORS.labels(topic).inc()
        log.error("a batch for %s[%d] was not delivered: %r", topic, partition, exc)
