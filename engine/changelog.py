"""Batched writes to a Faust table: the store is updated at once, the changelog goes out in one produce batch per
partition per input batch.

Why not `table[key] = value`: Faust sends every table write through its per-record send path (a future message,
the producer buffer queue, a sensor call and an aiokafka future per record). With many distinct leads per batch
that path was the largest single cost after message delivery (bench/FINDINGS.md). aiokafka's batch API appends
records to one buffer per partition instead.

Contract of `ChangelogWriter`:
- `put(partition, key, value)`: the table's store holds `value` for `key` immediately (later reads in the same
  batch see it); `value=None` deletes the key and queues a tombstone. `partition` is the partition of the input
  that changed the key: the table is co-partitioned with its source topics, as Faust's own write path assumes.
- `flush()`: hands the queued records to the app's producer, grouped by partition, in input order within a
  partition, and must be awaited before the input batch is acknowledged. Faust flushes its producer before it
  commits consumer offsets, so a committed input offset implies its changelog records were delivered
  (at-least-once, as with Faust's own writes). The producer's `max_batch_size` is honoured (the Tansu dev profile
  needs one record per batch, see engine/faust_settings.py).
- Recovery is Faust's own: it reads this changelog into the store on start and rebalance, unchanged.
- A batch the broker finally rejects is logged and counted in `CHANGELOG_ERRORS`; the input offsets may still be
  committed, as with Faust's own send path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from engine import metrics

log = logging.getLogger(__name__)


class ChangelogWriter:
    def __init__(self, table: Any, producer: Any) -> None:
        """`table`: a Faust table (its store and changelog topic); `producer`: the app's Faust producer."""
        self._table = table
        self._producer = producer
        self._pending: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def get(self, key: bytes) -> Any:
        return self._table.data.get(key)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        store = self._table.data
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
        records = self._pending.get(partition)
        if records is None:
            records = self._pending[partition] = []
        records.append((key, value))

    @property
    def pending(self) -> int:
        return sum(len(records) for records in self._pending.values())

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        producer = self._producer._ensure_producer()  # the aiokafka producer Faust flushes before commits
        topic = self._table.changelog_topic.get_topic_name()
        for partition, records in pending.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    await self._send(producer, batch, topic, partition)
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record
            await self._send(producer, batch, topic, partition)

    @staticmethod
    async def _send(producer: Any, batch: Any, topic: str, partition: int) -> None:
        delivery = await producer.send_batch(batch, topic, partition=partition)
        delivery.add_done_callback(lambda done: _report(done, topic, partition))


def _report(delivery: asyncio.Future[Any], topic: str, partition: int) -> None:
    if delivery.cancelled():
        return
    exc = delivery.exception()
    if exc is not None:
        metrics.CHANGELOG_ERRORS.inc()
        log.error("changelog batch for %s[%d] was not delivered: %r", topic, partition, exc)
