"""Device clocks: through the real collector and a real worker on one partition, a device whose clock runs 90 s fast
does not fire another lead's deadline early, and a slow device's purchase still cancels its own reminder.

The collector corrects SDK time by `receivedAt - sentAt` and clamps what it cannot correct; the worker moves a
partition's clock at most to an event's `receivedAt` (engine/worker/lead_worker.py, "Deadlines")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from engine.collector.app import create_app
from engine.config import Settings
from engine.events import format_ts
from engine.testing import TopicReader
from tests.collector.conftest import WRITE_KEY, ServerThread
from tests.integration.worker_process import WorkerProcess, cart_abandoned, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WITHIN_S = 8
SKEW_MS = 90_000
RULES = "rules:\n" + cart_abandoned("{connector: webhook}", within=f"{WITHIN_S}s")


@pytest.fixture
def skew_settings(settings: Settings, tmp_path: Path) -> Settings:
    # One partition: every lead shares one event-time clock, the case a fast device could abuse.
    return with_rules(settings, tmp_path, RULES, partitions=1, write_keys=(WRITE_KEY,))


@pytest.fixture
def worker(skew_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(skew_settings, tmp_path / "worker.log") as process:
        yield process


def post(url: str, events: list[dict[str, Any]], sent_at_ms: int | None) -> None:
    body: dict[str, Any] = {"batch": events}
    if sent_at_ms is not None:
        body["sentAt"] = format_ts(sent_at_ms)
    response = requests.post(f"{url}/v1/batch", json=body, auth=(WRITE_KEY, ""), timeout=10)
    assert response.status_code == 200, response.text


def track(lead: str, event: str, at_ms: int, message_id: str) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": lead, "timestamp": format_ts(at_ms), "messageId": message_id}


def actions(reader: TopicReader, lead: str) -> list[dict[str, Any]]:
    return [doc for doc in reader.docs() if doc["lead_id"] == lead]


async def test_a_fast_device_cannot_fire_another_leads_deadline_and_a_slow_device_still_cancels(
    skew_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready()
    server = ServerThread(lambda: create_app(skew_settings)).start()
    try:
        async with TopicReader.from_settings(skew_settings, "actions") as reader:
            now = int(time.time() * 1000)
            post(server.url, [track("on-time", "Product Added", now, "m-1")], sent_at_ms=now)
            # A phone 90 s fast, with sentAt (an SDK): corrected at the edge.
            fast = now + SKEW_MS
            post(server.url, [track("fast-sdk", "Page Viewed", fast, "m-2")], sent_at_ms=fast)
            # A client 90 s fast that sends no sentAt: clamped at the edge, and bounded by receivedAt in the worker.
            post(server.url, [track("fast-raw", "Page Viewed", fast, "m-3")], sent_at_ms=None)
            # A phone 90 s slow adds to its cart and buys a second later: the purchase must still cancel.
            slow = int(time.time() * 1000) - SKEW_MS
            post(server.url, [track("slow-sdk", "Product Added", slow, "m-4")], sent_at_ms=slow)
            time.sleep(1.0)
            slow = int(time.time() * 1000) - SKEW_MS
            post(server.url, [track("slow-sdk", "Order Completed", slow, "m-5")], sent_at_ms=slow)

            # Unprotected, the fast events would move the clock 90 s ahead and fire "on-time" at once.
            await reader.wait_for(lambda: time.time() * 1000 > now + 4_000, timeout_s=10, what="4 s")
            assert actions(reader, "on-time") == [], "a fast device fired another lead's deadline early"

            await reader.wait_for(lambda: actions(reader, "on-time"), timeout_s=20, what="the on-time reminder")
            arrived_ms = next(r.arrived_ms for r in reader.records if r.json()["lead_id"] == "on-time")
            (reminder,) = actions(reader, "on-time")
            # The collector shifted the event by its transit time (receivedAt - sentAt): a few milliseconds.
            assert 0 <= reminder["fired_at_ms"] - (now + WITHIN_S * 1000) < 1_000
            assert arrived_ms >= reminder["fired_at_ms"], "fired before its deadline"
            await reader.wait_for(lambda: time.time() * 1000 > now + WITHIN_S * 1000 + 3_000, 10, "slow deadline")
            assert actions(reader, "slow-sdk") == [], "the slow device's purchase did not cancel its reminder"
    finally:
        server.stop()
