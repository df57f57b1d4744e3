"""`ChangelogReadAheadRecovery.read_ahead` (engine/worker/faust_ext/changelog_read_ahead.py) on the real broker:
it applies a table's changelog records to the memory store as Faust's recovery would (last value wins, a tombstone
deletes, each key's partition remembered), starts after the offset Faust already applied, stops at Faust's
highwater, and advances Faust's offset bookkeeping no further than that highwater."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from engine.config import Settings
from engine.worker.app import create_app
from engine.worker.faust_ext import changelog_read_ahead
from engine.worker.faust_ext.changelog_read_ahead import ChangelogReadAheadRecovery, reads_ahead
from engine.worker.faust_ext.private_state import recovered_partitions

pytestmark = pytest.mark.integration

# partition 0: offsets 0..4; partition 1: offset 0
PARTITION_0 = [(b"k1", b"v1"), (b"k2", b"v2"), (b"k1", b"v1b"), (b"k2", None), (b"k3", b"v3")]
PARTITION_1 = [(b"k4", b"v4")]


async def _changelog_with_records(settings: Settings) -> tuple[Any, str]:
    nudge = create_app(settings)
    table = nudge.leads
    topic = table.changelog_topic.get_topic_name()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=settings.partitions, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for partition, records in ((0, PARTITION_0), (1, PARTITION_1)):
            for key, value in records:
                await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()
    return table, topic


def _recovery(table: Any, topic: str, highwaters: dict[int, int]) -> ChangelogReadAheadRecovery:
    recovery = table.app.tables.recovery
    assert isinstance(recovery, ChangelogReadAheadRecovery), "NudgeFaustApp installs the read-ahead recovery"
    for partition, highwater in highwaters.items():
        recovery.active_highwaters[TP(topic, partition)] = highwater
        recovery.tp_to_table[TP(topic, partition)] = table
    return recovery


async def test_records_after_the_applied_offset_up_to_the_highwater_reach_the_store(settings: Settings) -> None:
    table, topic = await _changelog_with_records(settings)
    assert reads_ahead(table)
    recovery = _recovery(table, topic, {0: 4, 1: 0})
    tp0, tp1 = TP(topic, 0), TP(topic, 1)
    offsets: Counter[TP] = Counter({tp0: 0, tp1: -1})  # offset 0 of partition 0 was applied already
    await recovery.read_ahead({tp0, tp1}, offsets)

    store = table.data
    assert dict(store.data) == {b"k1": b"v1b", b"k3": b"v3", b"k4": b"v4"}  # k2 written, then tombstoned
    assert dict(recovered_partitions(table)) == {b"k1": 0, b"k3": 0, b"k4": 1}
    assert dict(offsets) == {tp0: 4, tp1: 0}


async def test_offsets_stop_at_the_highwater_even_when_the_fetch_goes_past_it(settings: Settings) -> None:
    table, topic = await _changelog_with_records(settings)
    recovery = _recovery(table, topic, {0: 2})  # as Tansu reports it: short of the last batch's tail
    tp0 = TP(topic, 0)
    offsets: Counter[TP] = Counter({tp0: -1})
    await recovery.read_ahead({tp0}, offsets)
    assert offsets[tp0] == 2, "Faust's consistency check refuses an offset past its highwater"
    assert table.data.data[b"k1"] == b"v1b"


async def test_a_spent_budget_leaves_the_partitions_to_faust(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    table, topic = await _changelog_with_records(settings)
    recovery = _recovery(table, topic, {0: 4})
    monkeypatch.setattr(changelog_read_ahead, "BUDGET_SHARE_OF_REQUEST_TIMEOUT", 0.0)
    tp0 = TP(topic, 0)
    offsets: Counter[TP] = Counter({tp0: -1})
    with caplog.at_level(logging.INFO, logger="nudge.worker.recovery"):
        await recovery.read_ahead({tp0}, offsets)
    assert offsets[tp0] == -1 and dict(table.data.data) == {}
    assert "1 partition(s) left to Faust's recovery" in caplog.text


async def test_nothing_is_read_for_a_table_that_is_not_raw_bytes_in_memory(settings: Settings) -> None:
    nudge = create_app(settings)
    json_table = nudge.app.Table("json-values", default=None, partitions=settings.partitions)
    assert not reads_ahead(json_table)
    assert reads_ahead(nudge.leads)
