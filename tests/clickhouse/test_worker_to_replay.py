"""End to end: clickstream → real `nudge worker` (shipped rules) → actions → sink (crashed once) → chDB,
then `nudge replay` of the stored events with the same rules reproduces exactly the actions that fired.

One partition, events produced in event-time order, so the live worker's global event-time clock sees the same
order `simulate` does; a final "clock" event dated just before now lets every historical deadline fall due.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.clickhouse.client import connect
from engine.clickhouse.replay import replay
from engine.clickhouse.sink import SINK_TOPICS, Sink, ensure_topics
from engine.config import Settings
from engine.core import simulate
from engine.devstack import free_port
from engine.events import format_ts, parse_event
from engine.kafka import topics
from engine.language import load_rules
from tests.clickhouse.helpers import CrashBeforeCommit, SimulatedCrash, produce, wait_until
from tests.clickhouse.streamgen import Message, generate
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_worker_stream_lands_once_and_replay_reproduces_it(settings: Settings, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    live = settings.with_(partitions=1, allowed_lateness_s=0.5, web_port=free_port())
    stream = generate(now, leads=120, seed=11, days_back=8)
    clock = {"type": "page", "name": "Home", "userId": "clock", "messageId": "clock-1",
             "timestamp": format_ts(now - 60_000)}  # fmt: skip
    docs = [*sorted(stream.events, key=lambda e: parse_event(e).timestamp_ms), clock]
    events = [parse_event(d) for d in docs]
    rules = load_rules([live.rules_path])
    expected = {a.action_id: a for a in simulate(rules, events, flush=True) if a.fired_at_ms <= now - 60_000}
    assert len(expected) > 20, "the generated stream should make the shipped rules fire"

    # The worker's own `identity-handovers` topic too: created up front so it gets the one partition of this test.
    await ensure_topics(live, (*SINK_TOPICS, "identity-handovers"))
    worker = WorkerProcess(live, tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        messages = [Message(topics.CLICKSTREAM, d["userId"].encode(), orjson.dumps(d)) for d in docs]
        messages[len(messages) // 2 : len(messages) // 2] = [Message(topics.CLICKSTREAM, b"x", b"{broken")]
        await produce(live, messages)

        first = CrashBeforeCommit(live, crash_on_commit=2, max_rows=150, max_wait_s=0.2)
        with pytest.raises(SimulatedCrash):
            await asyncio.wait_for(first.run(), timeout=60)

        client = connect(live.clickhouse_dsn)
        second = Sink(live, max_rows=150, max_wait_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        try:

            def fired_ids() -> set[str]:
                rows = client.query("SELECT DISTINCT action_id FROM actions WHERE step = 'fired'").result_rows
                return {r[0] for r in rows}

            def count(sql: str) -> int:
                return int(client.query(sql).result_rows[0][0])

            try:
                await wait_until(
                    lambda: (
                        count("SELECT count() FROM events FINAL") == len(events)
                        and set(expected) <= fired_ids()
                    ),
                    timeout_s=60,
                    what="every event and every expected action in ClickHouse",
                )
            except TimeoutError as exc:
                got = fired_ids()
                missing = sorted(expected[i].rule for i in set(expected) - got)
                raise AssertionError(
                    f"{exc}: events {count('SELECT count() FROM events FINAL')}/{len(events)}, "
                    f"actions {len(got)}/{len(expected)}, missing by rule {missing[:20]}, "
                    f"extra {len(got - set(expected))}"
                    f"\nworker log:\n{worker.log_text()[-3000:]}"
                ) from None
            await wait_until(lambda: second.records_in_hand == 0, timeout_s=10, what="the last commit")
            assert first.rows_written > 0 and first.batches_committed == 1
            # No loss, no double count: each event and each fired action exactly once.
            assert count("SELECT count() FROM events FINAL") == len(events)
            assert count("SELECT uniqExact(message_id) FROM events") == len(events)
            fired = count("SELECT count() FROM actions FINAL WHERE step = 'fired'")
            assert fired == count("SELECT uniqExact(action_id) FROM actions WHERE step = 'fired'")
            assert fired_ids() == set(expected)
            # emitted_at is the worker's wall clock (Kafka record time), not the events' old event time.
            stale = count(
                f"SELECT countIf(toUnixTimestamp64Milli(emitted_at) < {now - 60_000}) FROM actions FINAL "
                "WHERE step = 'fired'"
            )
            assert stale == 0

            result = replay(client, rules, now - 30 * 86_400_000, now + 1, now - 500)
            assert result.identical, result.to_json()
            assert (
                sum(r.would_fire for r in result.rules) == len(expected) == sum(r.fired for r in result.rules)
            )
            # A window starting mid-history: the leads' earlier events rebuild their state, so still exact.
            middle = events[len(events) // 2].timestamp_ms
            partial = replay(client, rules, middle, now + 1, now - 500)
            assert partial.identical, partial.to_json()
            in_window = sum(1 for a in expected.values() if a.fired_at_ms >= middle)
            assert 0 < sum(r.fired for r in partial.rules) == in_window
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
            client.close()
    finally:
        worker.stop()

    # The command line, once the sink has let go of the embedded store.
    env = {**os.environ, **live.env()}
    nudge = str(Path(sys.executable).with_name("nudge"))
    out = subprocess.run(
        [nudge, "replay", "--since", "30d", "--check", "--json"], env=env, capture_output=True, timeout=90
    )
    assert out.returncode == 0, out.stderr.decode()
    doc = orjson.loads(out.stdout)
    assert doc["identical"] and sum(r["fired"] for r in doc["rules"]) == len(expected)
    out = subprocess.run(
        [nudge, "report", "--since", "30d", "--json"], env=env, capture_output=True, timeout=90
    )
    assert out.returncode == 0, out.stderr.decode()
    report = orjson.loads(out.stdout)
    assert sum(r["fired"] for r in report["nudges"]) == len(expected)
