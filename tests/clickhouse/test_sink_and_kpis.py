"""A generated stream through the real broker and the real sink into real chDB: counts, crash safety,
KPIs.

One store per module (ingestion runs once): the sink is crashed between a successful insert and its offset
commit, a second sink resumes from the committed offsets, and the store must hold exactly what was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from engine.clickhouse import kpis
from engine.clickhouse.client import connect
from engine.clickhouse.sink import Sink
from engine.config import Settings
from engine.devstack import StackInfo
from tests.clickhouse import expected
from tests.clickhouse.helpers import CrashBeforeCommit, SimulatedCrash, produce, wait_until
from tests.clickhouse.streamgen import Stream, generate

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


def _skipped(topic: str) -> float:
    return sum(
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "nudge_sink_skipped_records"
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("topic") == topic
    )


class Ingested:
    def __init__(self, settings: Settings, stream: Stream, client: Any, first: Sink, second: Sink) -> None:
        self.settings, self.stream, self.client, self.first, self.second = (
            settings,
            stream,
            client,
            first,
            second,
        )

    def count(self, sql: str) -> int:
        return int(self.client.query(sql).result_rows[0][0])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ingested(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ingested]:
    root: Path = tmp_path_factory.mktemp("ch-sink")
    prefix = f"chsink{int(time.time() * 1000) % 10**8}-"
    settings = Settings(
        broker_url=stack.broker_url,
        broker_profile="dev",
        clickhouse_dsn=f"chdb://{root / 'clickhouse'}",
        app_id=f"nudge-{prefix}",
        topic_prefix=prefix,
        partitions=4,
    )
    stream = generate(NOW_MS)
    skipped_before = _skipped("clickstream")
    await produce(settings, stream.messages())

    first = CrashBeforeCommit(settings, crash_on_commit=2, max_rows=400, max_wait_s=0.3)
    with pytest.raises(SimulatedCrash):
        await asyncio.wait_for(first.run(), timeout=60)
    assert first.batches_committed == 1 and first.rows_written > 400

    client = connect(settings.clickhouse_dsn)  # same path, same process: shares the engine with the sink
    second = Sink(settings, max_rows=400, max_wait_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    data = Ingested(settings, stream, client, first, second)
    try:
        total = len(stream.events)
        await wait_until(
            lambda: (
                data.count("SELECT count() FROM events FINAL") >= total
                and data.count("SELECT count() FROM lead_updates FINAL") >= len(stream.lead_updates)
                and data.count("SELECT count() FROM dead_letters FINAL") >= len(stream.dead_letters)
                and data.count("SELECT count() FROM actions FINAL")
                >= len(stream.actions) + len(stream.deliveries)
            ),
            timeout_s=60,
            what="every record in ClickHouse",
        )
        await wait_until(lambda: second.records_in_hand == 0, timeout_s=10, what="the last batch to commit")
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        data.skipped = _skipped("clickstream") - skipped_before  # type: ignore[attr-defined]
        yield data
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        client.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_counts_equal_what_was_sent_across_a_crash(ingested: Ingested) -> None:
    s = ingested.stream
    assert ingested.count("SELECT count() FROM events FINAL") == len(s.events)
    assert ingested.count("SELECT uniqExact(message_id) FROM events") == len(s.events)
    assert ingested.count("SELECT count() FROM actions FINAL WHERE step = 'fired'") == len(s.actions)
    assert ingested.count("SELECT count() FROM actions FINAL WHERE step != 'fired'") == len(s.deliveries)
    assert ingested.count("SELECT count() FROM dead_letters FINAL") == len(s.dead_letters)
    assert ingested.count("SELECT count() FROM lead_updates FINAL") == len(s.lead_updates)
    # The crashed batch really was written twice, and the store still counts it once.
    sent_rows = len(s.events) + len(s.actions) + len(s.deliveries) + len(s.dead_letters) + len(s.lead_updates)
    assert ingested.first.rows_written + ingested.second.rows_written > sent_rows
    # Invalid events are skipped, not stored; the crashed batch may have read them twice.
    assert len(s.invalid) <= ingested.skipped <= 2 * len(s.invalid)  # type: ignore[attr-defined]


@pytest.mark.asyncio(loop_scope="module")
async def test_rows_keep_their_fields(ingested: Ingested) -> None:
    action, emitted = ingested.stream.actions[0]
    row = ingested.client.query(
        "SELECT rule, lead_id, trigger, toUnixTimestamp64Milli(emitted_at), "
        "toUnixTimestamp64Milli(fired_at), explanation, connector FROM actions FINAL "
        "WHERE action_id = %(id)s AND step = 'fired'",
        parameters={"id": action.action_id},
    ).result_rows
    assert row == [
        (action.rule, action.lead_id, list(action.trigger), emitted, action.fired_at_ms, action.explanation,
         action.connector)
    ]  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
async def test_kpis_match_an_independent_computation(ingested: Ingested) -> None:
    s = ingested.stream
    since, until = NOW_MS - 7 * expected.DAY, NOW_MS + expected.DAY
    report = kpis.report(ingested.client, since, until)

    assert [step["leads"] for step in report["funnel"]] == expected.funnel(s)
    carts, abandoned = expected.abandonment(s)
    assert (report["abandonment"]["carts"], report["abandonment"]["abandoned"]) == (carts, abandoned)

    fired_per_rule: dict[str, int] = {}
    for action, _ in s.actions:
        fired_per_rule[action.rule] = fired_per_rule.get(action.rule, 0) + 1
    assert {r["rule"]: r["fired"] for r in report["nudges"]} == fired_per_rule
    sent = sum(1 for d in s.deliveries if d["outcome"] == "sent")
    assert sum(r.get("sent", 0) for r in report["nudges"]) == sent

    orders, revenue = expected.recovered(s, since, until)
    assert 0 < orders < sum(1 for e in s.events if e["event"] == "Order Completed")
    assert (report["recovered"]["orders"], report["recovered"]["revenue"]) == (orders, revenue)
    assert kpis.recovered(ingested.client, since, until, expected.DAY)["orders"] == expected.recovered(
        s, since, until, expected.DAY
    )[0]
    assert {(r["rule"], r["outcome"], r["reason"]): r["actions"] for r in report["not_sent"]} == expected.not_sent(s)

    delays = expected.detection_delays(s)
    for row in report["detection_delay"]["by_rule"]:
        values = delays[row["rule"]]
        assert (row["count"], row["p50_ms"], row["p95_ms"]) == (
            len(values), expected.quantile_exact(values, 0.5), expected.quantile_exact(values, 0.95)
        )  # fmt: skip
    every = [v for values in delays.values() for v in values]
    assert report["detection_delay"]["overall"]["p95_ms"] == expected.quantile_exact(every, 0.95)

    deliveries = expected.delivery_delays(s)
    assert {r["connector"]: (r["count"], r["p50_ms"]) for r in report["delivery_delay"]} == {
        c: (len(v), expected.quantile_exact(v, 0.5)) for c, v in deliveries.items()
    }

    reps = expected.hot_leads(s)
    got = {r["rep"]: r for r in report["hot_leads"]}
    assert {rep: r["hot_leads"] for rep, r in got.items()} == {rep: e["hot_leads"] for rep, e in reps.items()}
    for rep, e in reps.items():
        assert got[rep]["touched"] == len(e["ttft"])
        if e["ttft"]:
            assert got[rep]["time_to_first_touch_p50_ms"] == expected.quantile_exact(e["ttft"], 0.5)


@pytest.mark.asyncio(loop_scope="module")
async def test_summary_for_the_demo(ingested: Ingested) -> None:
    summary = kpis.summary(ingested.client)
    assert summary["events"] == len(ingested.stream.events)
    assert summary["actions_fired"] == len(ingested.stream.actions)
    assert summary["dead_letters"] == len(ingested.stream.dead_letters)
    assert summary["detection_delay_p50_ms"] is not None
