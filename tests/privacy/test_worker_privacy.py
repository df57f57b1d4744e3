"""The worker's side of privacy requests, through a real `nudge worker` on the dev broker: an erased lead's state
and pending deadline are gone (nothing fires), a suppressed lead's later events are dropped, both survive a
restart (the changelog holds a marker, not the lead), unsuppress takes events again, other leads are untouched,
and every request is answered on `privacy`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from engine.config import Settings
from engine.kafka import topics
from engine.privacy.records import CLEAR_SUPPRESSED, ERASE, MARK_SUPPRESSED, WorkerRequest
from engine.testing import TopicReader
from tests.integration.worker_process import WORKER_TOPICS, WorkerProcess, cart_abandoned, send, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WITHIN_S = 2
TOPICS = (*WORKER_TOPICS, topics.PRIVACY_REQUESTS, topics.PRIVACY)


@pytest.fixture
def worker_settings(settings: Settings, tmp_path: Path) -> Settings:
    return with_rules(settings, tmp_path, "rules:\n" + cart_abandoned(within=f"{WITHIN_S}s"))


@pytest.fixture
def worker(worker_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(worker_settings, tmp_path / "worker.log") as process:
        yield process


async def request(settings: Settings, op: str, lead: str, request_id: str, *, suppress: bool = False) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        record = WorkerRequest(op, lead, request_id, 0, suppress)
        await producer.send_and_wait(settings.topic(topics.PRIVACY_REQUESTS), record.to_bytes(), key=lead.encode())
    finally:
        await producer.stop()


async def cart(settings: Settings, lead: str, n: int) -> None:
    await send(settings, [(lead.encode(), track(lead, "Product Added", int(time.time() * 1000), f"{lead}-{n}"))])


def fired(reader: TopicReader, lead: str) -> list[dict]:
    return [d for d in (r.json() for r in reader.of("actions")) if d["lead_id"] == lead]


def receipts(reader: TopicReader, request_id: str) -> list[dict]:
    return [d for d in (r.json() for r in reader.of(topics.PRIVACY)) if d.get("request_id") == request_id]


async def test_erase_and_suppress_survive_a_restart_and_unsuppress_takes_events_again(
    worker_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready(TOPICS)
    async with TopicReader.from_settings(worker_settings, "actions", topics.PRIVACY) as reader:
        await cart(worker_settings, "gone", 1)
        await cart(worker_settings, "kept", 1)
        await worker.wait_consumed(2)  # the erase must find the lead's state and deadline
        await request(worker_settings, ERASE, "gone", "req-1", suppress=True)
        await reader.wait_for(lambda: receipts(reader, "req-1"), 20, "the worker's receipt")
        [receipt] = receipts(reader, "req-1")
        assert receipt["store"] == "worker" and receipt["index"] == 0
        assert receipt["counts"] == {"lead_states": 1, "deadlines": 1, "suppressed": 1}
        await reader.wait_for(lambda: fired(reader, "kept"), 20, "the other lead's reminder")
        await cart(worker_settings, "gone", 2)  # a later event of the suppressed lead: dropped
        time.sleep(WITHIN_S + 1.5)
        assert fired(reader, "gone") == []

        worker.stop()
        await worker.start_ready()
        await cart(worker_settings, "gone", 3)  # the marker came back with the changelog: still dropped
        await cart(worker_settings, "kept", 2)
        await reader.wait_for(lambda: len(fired(reader, "kept")) == 2, 20, "the other lead's second reminder")
        time.sleep(1.0)
        assert fired(reader, "gone") == [], "a restarted worker resurrected the erased lead"

        await request(worker_settings, CLEAR_SUPPRESSED, "gone", "req-2")
        await reader.wait_for(lambda: receipts(reader, "req-2"), 20, "the unsuppress receipt")
        assert receipts(reader, "req-2")[0]["counts"]["suppressed"] == 1
        await cart(worker_settings, "gone", 4)
        await reader.wait_for(lambda: fired(reader, "gone"), 20, "a reminder after unsuppress")
        assert [a["trigger"] for a in fired(reader, "gone")] == [["gone-4"]]


async def test_delete_without_suppression_unknown_leads_and_suppress_keeping_state(
    worker_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready(TOPICS)
    async with TopicReader.from_settings(worker_settings, "actions", topics.PRIVACY) as reader:
        await cart(worker_settings, "deleted", 1)
        await cart(worker_settings, "paused", 1)
        await worker.wait_consumed(2)  # input on another topic is not ordered with the clickstream
        await request(worker_settings, ERASE, "deleted", "req-d")
        await request(worker_settings, ERASE, "nobody", "req-u", suppress=True)
        await request(worker_settings, MARK_SUPPRESSED, "paused", "req-s")
        for request_id in ("req-d", "req-u", "req-s"):
            await reader.wait_for(lambda r=request_id: receipts(reader, r), 20, f"receipt of {request_id}")
        assert receipts(reader, "req-d")[0]["counts"] == {"lead_states": 1, "deadlines": 1, "suppressed": 0}
        assert receipts(reader, "req-u")[0]["counts"] == {"lead_states": 0, "deadlines": 0, "suppressed": 1}
        assert receipts(reader, "req-s")[0]["counts"] == {"lead_states": 0, "deadlines": 1, "suppressed": 1}
        time.sleep(WITHIN_S + 1.5)
        assert fired(reader, "deleted") == [] and fired(reader, "paused") == []
        await cart(worker_settings, "deleted", 2)  # Delete does not suppress: a new history starts
        await reader.wait_for(lambda: fired(reader, "deleted"), 20, "a reminder for the new history")
        assert [a["trigger"] for a in fired(reader, "deleted")] == [["deleted-2"]]


async def test_idle_leads_without_a_pending_deadline_are_dropped(settings: Settings, tmp_path: Path) -> None:
    """NUDGE_LEAD_IDLE_DAYS: a lead whose state was not written for that long and has no pending deadline gets a
    tombstone in the changelog; a lead waiting for a deadline stays (here 3 s idle, a 60 s reminder)."""
    idle = with_rules(settings, tmp_path, "rules:\n" + cart_abandoned(within="60s"), lead_idle_days=3 / 86400)
    changelog = f"{idle.app_id}-leads-changelog"
    with WorkerProcess(idle, tmp_path / "worker.log") as worker:
        await worker.start_ready(TOPICS)
        reader = TopicReader(idle.bootstrap_servers, [changelog])
        async with reader:
            now_ms = int(time.time() * 1000)
            await send(idle, [(b"browser", track("browser", "Product Viewed", now_ms, "v-1")),
                              (b"waiting", track("waiting", "Product Added", now_ms, "a-1"))])  # fmt: skip
            await reader.wait_for(lambda: {r.key for r in reader.records} >= {b"browser", b"waiting"}, 20, "states")
            await reader.wait_for(
                lambda: any(r.key == b"browser" and not r.value for r in reader.records), 20, "the idle tombstone"
            )
            time.sleep(1.5)
            assert [bool(r.value) for r in reader.records if r.key == b"waiting"] == [True]
