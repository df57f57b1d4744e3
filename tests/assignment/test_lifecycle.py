"""Automatic release through the real broker: a stage change to `customer` on `lead-updates` or a `Deal Lost`
event on the clickstream frees the rep, and the freed slot goes to the queue at once; a record older than the
assignment frees nothing. Plus the pure decision."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from engine.assignment.lifecycle import release_signal
from engine.assignment.roster import ReleasePolicy
from engine.assignment.service import AssignmentService
from engine.clickhouse.sink import ensure_topics
from engine.config import Settings
from engine.events import format_ts
from engine.kafka import topics
from engine.testing import wait_until
from tests.assignment.conftest import ManualClock, rep, roster

POLICY = ReleasePolicy(stages=("Customer",), events=("Deal Lost",))


def stage_change(lead_id: str, stage: str, at_ms: int) -> bytes:
    return orjson.dumps({"kind": "stage_changed", "lead_id": lead_id, "at_ms": at_ms, "from": "sql", "to": stage,
                         "stage": stage})  # fmt: skip


def track(lead_id: str, name: str, at_ms: int) -> bytes:
    return orjson.dumps({"type": "track", "event": name, "userId": lead_id, "messageId": f"m-{lead_id}-{name}",
                         "timestamp": format_ts(at_ms)})  # fmt: skip


def test_which_records_release_a_lead():
    signal = release_signal(topics.LEAD_UPDATES, stage_change("ada", "customer", 5), POLICY)
    assert (signal.lead_id, signal.reason, signal.at_ms) == ("ada", "stage:customer", 5)
    assert release_signal(topics.LEAD_UPDATES, stage_change("ada", "sql", 5), POLICY) is None
    assert release_signal(topics.LEAD_UPDATES, b'{"kind": "assigned", "stage": "customer"}', POLICY) is None
    assert release_signal(topics.LEAD_UPDATES, b"stage_changed {not json", POLICY) is None
    event = release_signal(topics.CLICKSTREAM, track("bob", "Deal Lost", 1_800_000_000_000), POLICY)
    assert (event.lead_id, event.reason) == ("bob", "event:Deal Lost")
    assert release_signal(topics.CLICKSTREAM, track("bob", "Deal Won", 1_800_000_000_000), POLICY) is None
    assert release_signal(topics.CLICKSTREAM, b'{"type": "track", "event": "Deal Lost"}', POLICY) is None  # no id
    assert release_signal(topics.CLICKSTREAM, track("bob", "Deal Lost", 0), ReleasePolicy(events=())) is None


@pytest.mark.integration
async def test_a_won_or_lost_lead_frees_its_rep_for_the_queue(settings: Settings, clock: ManualClock):
    await ensure_topics(settings, (topics.ACTIONS, topics.LEAD_UPDATES, topics.CLICKSTREAM))
    team = roster(rep("alice", capacity=1), rep("bob", capacity=1), release_on=POLICY)
    service = AssignmentService(settings, team, clock=clock, interval_s=0.05)
    await service.start()
    assigner = service.assigner
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        assert (await assigner.assign_or_queue("won", {})).rep_id == "alice"
        assert (await assigner.assign_or_queue("lost", {})).rep_id == "bob"
        assert (await assigner.assign_or_queue("next", {})).position == 1
        assert (await assigner.assign_or_queue("after", {})).position == 2
        consumer = service.lifecycle.consumer
        await wait_until(lambda: len(consumer.assignment()) > 0, 30, "the lifecycle consumer joined its group")
        # It starts at the latest offsets: resolve them before sending, or a record sent now can fall before them.
        for partition in consumer.assignment():
            await consumer.position(partition)
        now_ms = assigner.now_ms()

        async def send(topic: str, key: str, value: bytes) -> None:
            await producer.send_and_wait(settings.topic(topic), value, key=key.encode())

        await send(topics.LEAD_UPDATES, "lost", stage_change("lost", "customer", now_ms - 3_600_000))  # too old
        await send(topics.LEAD_UPDATES, "won", stage_change("won", "customer", now_ms))
        await wait_until(lambda: assigner.owner("next"), 20, "the waiting lead got the freed slot")
        assert (await assigner.owner("next")).rep_id == "alice" and await assigner.owner("won") is None
        assert (await assigner.owner("lost")).rep_id == "bob"  # the stale record released nothing

        await send(topics.CLICKSTREAM, "lost", track("lost", "Deal Lost", now_ms))
        await wait_until(lambda: assigner.owner("after"), 20, "the second waiting lead got bob's slot")
        assert (await assigner.owner("after")).rep_id == "bob" and await assigner.owner("lost") is None
    finally:
        await producer.stop()
        await service.stop()
    released = (await assigner.store.history("won"))[-1]
    assert (released["event"], released["by"], released["reason"], released["rep"]) == (
        "released", "lifecycle", "stage:customer", "alice",
    )  # fmt: skip
    assert (await assigner.store.history("lost"))[-1]["reason"] == "event:Deal Lost"
