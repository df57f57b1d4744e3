"""A real `nudge worker` (subprocess) on the real broker, driven only through Kafka topics.

Rules are a small test pack with second-scale windows; allowed lateness is 0.5 s so deadlines fire about
0.5-0.7 s after they fall due. Every wait is bounded and polls (no sleeps as assertions).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from engine.config import Settings
from engine.events import format_ts
from engine.testing import TopicReader, wait_until
from tests.integration.worker_process import WorkerProcess, cart_abandoned, send, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
NOW_ISO = "2026-01-01T00:00:00Z"

RULES = "rules:\n" + cart_abandoned() + """\
  - id: wishlist_reminder
    kind: absence
    when: {event: Wishlist Added}
    within: 8s  # due while the worker restarts (or just after): the recovered index must fire it once
    action: {connector: webhook}
  - id: pricing_interest
    kind: threshold
    match: {event: Pricing Viewed}
    count: 2
    within: 10m
    action: {connector: slack}
"""


@pytest.fixture
def worker_settings(settings: Settings, tmp_path: Path) -> Settings:
    return with_rules(settings, tmp_path, RULES)


@pytest.fixture
def worker(worker_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(worker_settings, tmp_path / "worker.log") as process:
        yield process


def actions_for(reader: TopicReader, lead: str, rule: str | None = None) -> list[dict]:
    found = [r.json() for r in reader.of("actions")]
    return [a for a in found if a["lead_id"] == lead and (rule is None or a["rule"] == rule)]


async def test_abandoned_cart_fires_once_purchase_cancels_and_bad_input_is_dead_lettered(
    worker_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready()
    anonymous_cart = {"type": "track", "event": "Product Added", "anonymousId": "anon-1", "messageId": "m-n1"}
    identify = {
        "type": "identify", "userId": "known-1", "anonymousId": "anon-1", "messageId": "m-n2",
        "traits": {"email": "zoe@example.com"},
    }
    far_future = {"type": "track", "event": "Pricing Viewed", "userId": "future", "timestamp": 10**15}
    async with TopicReader.from_settings(worker_settings, "actions", "dead-letters") as reader:
        now = int(time.time() * 1000)
        await send(
            worker_settings,
            [
                (b"abandoner", track("abandoner", "Product Added", now, "m-a1", sku="sku-1")),
                (b"buyer", track("buyer", "Product Added", now, "m-b1", sku="sku-1")),
                (b"buyer", track("buyer", "Order Completed", now + 300, "m-b2", order_id="o-1")),
                (b"junk", b"{not json"),
                (None, orjson.dumps({"type": "track", "event": "Product Added", "timestamp": NOW_ISO})),
                (b"u", orjson.dumps({"type": "track", "event": "X", "userId": "u", "timestamp": "soon"})),
                (b"someone-else", track("u-key", "Product Added", now, "m-k1")),
                # Epoch-ms timestamps in the year 33658: valid JSON, but outside the valid range of event times;
                # each record costs itself (a dead letter), not the worker nor the lead's other records.
                (b"future", orjson.dumps({**far_future, "messageId": "m-f1"})),
                (b"future", orjson.dumps({**far_future, "messageId": "m-f2"})),
                # An anonymous cart, then the visitor identifies: the cart moves to the known lead.
                (b"anon-1", orjson.dumps({**anonymous_cart, "timestamp": format_ts(now)})),
                (b"known-1", orjson.dumps({**identify, "timestamp": format_ts(now + 200)})),
                # Sent after the bad input: its firing proves the worker kept running.
                (b"late-shopper", track("late-shopper", "Product Added", now + 1000, "m-c1")),
            ],
        )
        for lead in ("late-shopper", "abandoner", "known-1"):
            await reader.wait_for(lambda lead=lead: actions_for(reader, lead), timeout_s=20, what=f"{lead}'s action")
        fired_at = time.time() * 1000
        # Each partition has its own event-time clock: the buyer's deadline (had it not been cancelled) falls due
        # with the abandoner's; give in-flight actions a moment to land before asserting that nothing else fired.
        await reader.wait_for(lambda: time.time() * 1000 - fired_at > 1500, timeout_s=5, what="drain")
        await reader.wait_for(lambda: len(reader.of("dead-letters")) >= 6, timeout_s=10, what="dead letters")

    abandoned = actions_for(reader, "abandoner")
    assert len(abandoned) == 1, abandoned
    action = abandoned[0]
    assert action["rule"] == "cart_abandoned"
    assert action["trigger"] == ["m-a1"]
    assert action["fired_at_ms"] == now + 2000, "a deadline action is stamped with its deadline (event time)"
    assert actions_for(reader, "buyer") == [], "a purchase inside the window cancels the abandonment"
    assert actions_for(reader, "u-key") == [], "a record with the wrong key is rejected, not evaluated"
    (merged,) = actions_for(reader, "known-1")
    assert merged["rule"] == "cart_abandoned" and merged["trigger"] == ["m-n1"]
    assert merged["context"]["traits"]["email"] == "zoe@example.com"
    assert actions_for(reader, "anon-1") == [], "the anonymous cart moved to the identified lead"

    letters = {(r.json()["reason"], r.json()["key"]): r.json() for r in reader.of("dead-letters")}
    assert set(letters) == {
        ("not_json", "junk"),
        ("missing_lead_id", None),
        ("bad_timestamp", "u"),
        ("wrong_key", "someone-else"),
        ("bad_timestamp", "future"),
    }
    assert len(reader.of("dead-letters")) == 6, "each far-future record is dead-lettered on its own"
    letters = {reason: doc for (reason, _), doc in letters.items()}
    assert letters["not_json"]["payload"] == "{not json"
    assert letters["not_json"]["source"] == "worker"
    assert letters["wrong_key"]["key"] == "someone-else"
    assert all(d["detail"] for d in letters.values())
    assert worker.alive()

    url = f"http://127.0.0.1:{worker_settings.web_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'nudge_rule_fires_total{kind="absence",rule="cart_abandoned"} 3.0' in body
    assert 'nudge_dead_letters_total{reason="not_json",source="worker"} 1.0' in body
    assert "nudge_deadline_lag_seconds_count" in body


async def test_restarted_worker_keeps_state_and_fires_each_pending_deadline_once(
    worker_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready()
    async with TopicReader.from_settings(worker_settings, "actions") as reader:
        now = int(time.time() * 1000)
        await send(
            worker_settings,
            [
                (b"early", track("early", "Product Added", now, "m-e1")),  # fires before the restart
                (b"wisher", track("wisher", "Wishlist Added", now, "m-w1")),  # due after the restart
                (b"reader", track("reader", "Pricing Viewed", now, "m-r1")),  # 1 of 2: kept in the table
            ],
        )
        await reader.wait_for(lambda: actions_for(reader, "early"), timeout_s=15, what="early abandonment")
        assert actions_for(reader, "wisher") == []

        worker.stop()
        assert not worker.alive()
        worker.start()
        await worker.wait_ready()
        assert "deadline index rebuilt: 1 leads, 1 deadlines" in worker.log_text(), worker.log_text()[-3000:]
        # The table came back through the read-ahead (engine/worker/faust_ext/changelog_read_ahead.py).
        assert re.search(r"changelog read ahead: [1-9]\d* records", worker.log_text()), worker.log_text()[-3000:]
        # The lead gauges come back from the same pass over the recovered table (`TableFigures`).
        url = f"http://127.0.0.1:{worker_settings.web_port}/metrics"

        def leads_gauge() -> str:
            body = urllib.request.urlopen(url, timeout=5).read().decode()
            return next((line for line in body.splitlines() if line.startswith("nudge_active_leads ")), "")

        await reader.wait_for(lambda: leads_gauge() == "nudge_active_leads 3.0", timeout_s=12,
                              what="the active-leads gauge after the restart")

        second_view = track("reader", "Pricing Viewed", int(time.time() * 1000), "m-r2")
        await send(worker_settings, [(b"reader", second_view)])
        await reader.wait_for(lambda: actions_for(reader, "reader"), timeout_s=15, what="threshold action")
        await reader.wait_for(lambda: actions_for(reader, "wisher"), timeout_s=25, what="recovered deadline")
        done_at = time.time()
        await reader.wait_for(lambda: time.time() - done_at > 1.5, timeout_s=5, what="drain")

    assert len(actions_for(reader, "wisher")) == 1
    assert len(actions_for(reader, "early")) == 1, "a deadline fired before the restart must not fire again"
    threshold = actions_for(reader, "reader")
    assert len(threshold) == 1 and threshold[0]["trigger"] == ["m-r1", "m-r2"], threshold


async def test_records_sent_while_the_worker_starts_are_all_evaluated(
    worker_settings: Settings, worker: WorkerProcess
) -> None:
    """Records produced before the worker joins, while it recovers and seeks its never-committed partitions, and
    after it is ready are each evaluated: none is taken for already seen around the first seek."""
    from aiokafka import AIOKafkaProducer

    from engine.kafka.admin import ensure_topics
    from tests.integration.worker_process import READY_MARK, WORKER_TOPICS

    await ensure_topics(worker_settings, WORKER_TOPICS)
    producer = AIOKafkaProducer(bootstrap_servers=worker_settings.bootstrap_servers)
    await producer.start()
    leads: list[str] = []
    try:
        worker.start()
        started = time.monotonic()
        ready_at: float | None = None
        # One new lead every ~5 ms, from before the worker joins until 2 s after it said it is ready: some land
        # while it seeks its partitions to where their input starts.
        while ready_at is None or time.monotonic() - ready_at < 2.0:
            lead = f"starter-{len(leads)}"
            leads.append(lead)
            value = track(lead, "Product Added", int(time.time() * 1000), f"m-s{len(leads)}")
            await producer.send_and_wait(worker_settings.topic("clickstream"), value, key=lead.encode())
            if ready_at is None and READY_MARK in worker.log_text():
                ready_at = time.monotonic()
            assert ready_at is not None or time.monotonic() - started < 60, "the worker never became ready"
            worker.check_alive()
            await asyncio.sleep(0.005)
    finally:
        await producer.stop()
    async with TopicReader.from_settings(worker_settings, "actions") as reader:
        def missing() -> list[str]:
            fired = {r.json()["lead_id"] for r in reader.of("actions")}
            return [lead for lead in leads if lead not in fired]
        await wait_until(lambda: not missing(), 30, "every lead's action",
                         detail=lambda: f"{len(missing())} of {len(leads)} missing: {missing()[:10]}")
