"""Detect the Tansu broker bug that the `dev` broker profile works around (engine/worker/faust_ext/broker_profiles.py).

Tansu 0.6.0 answers ListOffsets(latest) with "first offset of the last record batch + 1" instead of "last
offset + 1". When a fixed Tansu ships, `test_end_offset_bug_still_present` fails: then drop
`producer_max_batch_size=1` from the dev profile (and this test), and changelog recovery keeps its normal
producer batching.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from engine.config import Settings

pytestmark = pytest.mark.integration

RECORDS = 5


async def _end_offset_after_one_batch(settings: Settings, topic: str, max_batch_size: int) -> int:
    bootstrap = settings.bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    # A long linger gathers every record into one produce request (one batch) unless the batch size forbids.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200, max_batch_size=max_batch_size)
    await producer.start()
    try:
        sends = [await producer.send(topic, f"r{i}".encode(), partition=0) for i in range(RECORDS)]
        metadata = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    assert [m.offset for m in metadata] == list(range(RECORDS))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def test_end_offset_bug_still_present(settings: Settings) -> None:
    end = await _end_offset_after_one_batch(settings, settings.topic("quirk-batched"), max_batch_size=16384)
    assert end != RECORDS, (
        "Tansu now reports the correct end offset for a multi-record batch: the ListOffsets bug is fixed. "
        "Remove the producer_max_batch_size=1 workaround from the dev profile in "
        "engine/worker/faust_ext/broker_profiles.py "
        "and delete this test."
    )
    assert end == 1, f"unexpected end offset {end} for one batch of {RECORDS} records (bug gives 1)"


async def test_one_record_batches_give_correct_end_offset(settings: Settings) -> None:
    """The workaround itself: with one record per batch the end offset is right, so recovery reads all."""
    end = await _end_offset_after_one_batch(settings, settings.topic("quirk-single"), max_batch_size=1)
    assert end == RECORDS
