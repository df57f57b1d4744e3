"""CLI: report and replay arguments, rendering; `nudge sink` as a process (SIGKILL, restart, SIGTERM)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from engine.cli import main
from engine.clickhouse.kpis import parse_since
from engine.clickhouse.sink import Sink
from engine.commands.report import render, table
from engine.config import Settings
from engine.testing import ChildProcess, CommittedOffsets


@pytest.mark.parametrize(("text", "ms"), [("30m", 1_800_000), ("24h", 86_400_000), ("7d", 604_800_000)])
def test_since_durations(text: str, ms: int) -> None:
    assert parse_since(text) == ms


@pytest.mark.parametrize("command", ["report", "replay"])
def test_a_bad_since_is_a_usage_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--since", "a week"]) == 2
    assert "use e.g. 30m, 24h, 7d" in capsys.readouterr().err


def test_replay_with_invalid_rules_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    kind: nope\n")
    assert main(["replay", "--rules", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_table_aligns_numbers_and_shows_missing_values() -> None:
    text = table("T", ["rule", "n", "p50"], [["a", 1, None], ["long-rule", 1234, 2.5]])
    assert text.splitlines() == [
        "T",
        "rule          n   p50",
        "---------  ----  ----",
        "a             1     -",
        "long-rule  1234  2.50",
    ]


def test_render_an_empty_report() -> None:
    empty = {
        "window": {"since_ms": 0, "until_ms": 1000},
        "funnel": [{"step": "Product Viewed", "leads": 0, "from_previous": None}],
        "abandonment": {"carts": 0, "abandoned": 0, "rate": None},
        "nudges": [],
        "not_sent": [],
        "recovered": {"orders": 0, "revenue": 0.0, "by_rule": [], "attribution": {"window_ms": 7 * 86_400_000}},
        "detection_delay": {"overall": None, "by_rule": []},
        "delivery_delay": [],
        "hot_leads": [],
    }
    text = render(empty)
    assert "Abandonment: 0 of 0 carts (-)" in text
    assert text.count("(none)") == 6
    assert "Recovered revenue: 0 orders, 0.00" in text and "sent to the lead at most 7 d before it" in text


def test_a_bad_attribution_window_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--attribution", "a week"]) == 2
    assert "--attribution 'a week' is not a duration" in capsys.readouterr().err


async def test_sink_waits_for_a_server_that_is_down_and_stops_on_request() -> None:
    settings = Settings(
        clickhouse_dsn="http://default:pw@127.0.0.1:9/nudge", broker_url="kafka://127.0.0.1:9"
    )
    before = REGISTRY.get_sample_value("nudge_clickhouse_insert_errors_total", {"table": "connect"}) or 0
    stop = asyncio.Event()
    task = asyncio.create_task(Sink(settings, backoff_initial_s=0.01, backoff_max_s=0.05).run(stop))
    deadline = asyncio.get_running_loop().time() + 20
    while (
        REGISTRY.get_sample_value("nudge_clickhouse_insert_errors_total", {"table": "connect"}) or 0
    ) < before + 2:
        assert asyncio.get_running_loop().time() < deadline, "the sink did not retry"
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def committed_clickstream(settings: Settings, group: str) -> int:
    """How many clickstream records the group committed (read without joining it: see CommittedOffsets)."""
    topic = settings.topic("clickstream")
    async with CommittedOffsets(settings.bootstrap_servers, group) as offsets:
        return sum((await offsets.of((topic, p) for p in range(settings.partitions))).values())


@pytest.mark.integration
async def test_nudge_sink_killed_mid_stream_then_restarted_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    import os
    import time

    import orjson

    from engine.clickhouse.client import connect
    from engine.events import format_ts
    from engine.kafka import topics
    from tests.clickhouse.helpers import produce
    from tests.clickhouse.streamgen import Message

    now = int(time.time() * 1000)
    total = 3_000
    messages = []
    for i in range(total):
        doc = {"type": "track", "event": "Product Viewed", "userId": f"k{i % 500}", "messageId": f"kill-{i}",
               "timestamp": format_ts(now - total + i)}  # fmt: skip
        messages.append(Message(topics.CLICKSTREAM, doc["userId"].encode(), orjson.dumps(doc)))
    await produce(settings, messages)
    group = f"{settings.app_id}-sink"
    env = {**os.environ, **settings.env()}
    sink = ChildProcess.nudge("nudge sink", ["sink", "--max-rows", "500"], env, tmp_path / "sink.log")

    async def committed(count: int) -> bool:
        return await committed_clickstream(settings, group) >= count

    with sink.start():
        await sink.wait_until(lambda: committed(1), timeout_s=30, what="a first commit")  # some batches in
        sink.kill()  # no flush, no commit of the batch in hand
        sink.start()
        await sink.wait_until(lambda: committed(total), timeout_s=30, what=f"{total} committed")
        # The first sink may have committed everything before it was killed: then the wait above returns at
        # once, and a SIGTERM during the second one's start-up (before its handler exists) would kill it.
        await sink.wait_for_log("Successfully synced group", timeout_s=30)
        assert sink.stop(grace_s=30) == 0, sink.log_text()
    client = connect(settings.clickhouse_dsn)
    try:
        assert client.query("SELECT count() FROM events FINAL").result_rows[0][0] == total
        assert client.query("SELECT uniqExact(message_id) FROM events").result_rows[0][0] == total
    finally:
        client.close()
