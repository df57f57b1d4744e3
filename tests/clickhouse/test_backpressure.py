"""ClickHouse refusing inserts: the sink retries with backoff, stops consuming, commits and loses nothing."""

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


def _errors(table: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("nudge_clickhouse_insert_errors_total", {"table": table}) or 0.0


async def test_clickhouse_down_back_pressure_then_no_loss(settings: Settings) -> None:
    now = int(time.time() * 1000)
    events = [
        {"type": "track", "event": "Product Viewed", "userId": f"u{i % 40}", "messageId": f"bp-{i}",
         "timestamp": format_ts(now - 60_000 + i)}
        for i in range(1500)
    ]  # fmt: skip
    client = connect(settings.clickhouse_dsn)
    try:
        migrate(client)
        # A real refusal: the table the sink writes to is gone (as when a server rejects inserts).
        client.command("RENAME TABLE events TO events_offline")
        errors_before = _errors("events")
        sink = Sink(settings, max_rows=300, max_wait_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.4)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        try:
            await produce(
                settings, [Message(topics.CLICKSTREAM, e["userId"].encode(), orjson.dumps(e)) for e in events]
            )
            await wait_until(
                lambda: _errors("events") >= errors_before + 4, timeout_s=30, what="insert retries"
            )
            # Back-pressure: one batch in memory, nothing committed, nothing more consumed.
            assert 0 < sink.records_in_hand <= 300
            assert sink.batches_committed == 0
            await asyncio.sleep(0.5)
            assert sink.records_in_hand <= 300 and not sink.holding_back

            client.command("RENAME TABLE events_offline TO events")
            await wait_until(
                lambda: client.query("SELECT count() FROM events FINAL").result_rows[0][0] == len(events),
                timeout_s=30,
                what="all events after recovery",
            )
            assert client.query("SELECT count() FROM events").result_rows[0][0] == len(events)  # no duplicate
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
    finally:
        client.close()
