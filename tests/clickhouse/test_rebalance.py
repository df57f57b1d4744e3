"""Two sinks in one consumer group (one process, one shared chDB engine): a rebalance mid-stream loses and
doubles nothing."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from engine.clickhouse.client import connect
from engine.clickhouse.migrations import migrate
from engine.clickhouse.sink import Sink
from engine.config import Settings
from engine.events import format_ts
from engine.kafka import topics
from tests.clickhouse.helpers import produce, wait_until
from tests.clickhouse.streamgen import Message

pytestmark = pytest.mark.integration


def _events(start: int, n: int, now: int) -> list[Message]:
    out = []
    for i in range(start, start + n):
        doc = {"type": "track", "event": "Page Viewed", "userId": f"r{i % 97}", "messageId": f"rb-{i}",
               "timestamp": format_ts(now - 100_000 + i)}  # fmt: skip
        out.append(Message(topics.CLICKSTREAM, doc["userId"].encode(), orjson.dumps(doc)))
    return out


async def test_a_second_sink_joining_mid_stream(settings: Settings) -> None:
    now = int(time.time() * 1000)
    client = connect(settings.clickhouse_dsn)
    migrate(client)
    stops = [asyncio.Event(), asyncio.Event()]
    sinks = [Sink(settings, max_rows=200, max_wait_s=0.3) for _ in stops]
    tasks = [asyncio.create_task(sinks[0].run(stops[0]))]
    try:

        def stored() -> int:
            return int(client.query("SELECT count() FROM events FINAL").result_rows[0][0])

        await produce(settings, _events(0, 2000, now))
        await wait_until(lambda: stored() > 0, timeout_s=30, what="the first sink to write")
        tasks.append(asyncio.create_task(sinks[1].run(stops[1])))

        def split() -> bool:
            owned = [s.assignment for s in sinks]
            return all(owned) and not owned[0] & owned[1]

        await wait_until(split, timeout_s=30, what="the group to split the partitions between the sinks")
        await produce(settings, _events(2000, 2000, now))
        await wait_until(lambda: stored() == 4000, timeout_s=60, what="all 4000 events")
        await wait_until(
            lambda: all(s.records_in_hand == 0 for s in sinks) and sinks[1].batches_committed > 0,
            timeout_s=30,
            what="both sinks to commit",
        )
        assert int(client.query("SELECT uniqExact(message_id) FROM events").result_rows[0][0]) == 4000
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        client.close()


async def test_rebalance_while_clickhouse_refuses(settings: Settings) -> None:
    """A sink holds a batch it cannot write when a second sink joins: the batch is given up uncommitted,
    re-read by whoever owns the partitions now, and written once when ClickHouse is back."""
    now = int(time.time() * 1000)
    client = connect(settings.clickhouse_dsn)
    migrate(client)
    client.command("RENAME TABLE events TO events_offline")
    stops = [asyncio.Event(), asyncio.Event()]
    sinks = [
        Sink(settings, max_rows=200, max_wait_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.3) for _ in stops
    ]
    tasks = [asyncio.create_task(sinks[0].run(stops[0]))]
    try:
        await produce(settings, _events(0, 1500, now))
        await wait_until(
            lambda: sinks[0].records_in_hand > 0 and sinks[0].paused, 30, "a held batch"
        )
        tasks.append(asyncio.create_task(sinks[1].run(stops[1])))
        await wait_until(
            lambda: all(s.assignment for s in sinks),
            30,
            "both sinks to own partitions",
        )
        client.command("RENAME TABLE events_offline TO events")

        def stored() -> int:
            return int(client.query("SELECT count() FROM events FINAL").result_rows[0][0])

        await wait_until(lambda: stored() == 1500, timeout_s=60, what="all 1500 events")
        assert int(client.query("SELECT uniqExact(message_id) FROM events").result_rows[0][0]) == 1500
        await wait_until(lambda: all(s.records_in_hand == 0 for s in sinks), 30, "both sinks idle")
        assert stored() == 1500
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        client.close()
