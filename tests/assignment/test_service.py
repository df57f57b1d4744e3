"""`AssignmentService` against the real dev stack: ack over HTTP, SLA notifications produced to Kafka."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from engine.assignment.service import AssignmentService
from engine.clickhouse.sink import ensure_topics
from engine.config import Settings
from engine.core.model import Action
from engine.kafka import topics
from engine.testing import TopicReader
from tests.assignment.conftest import ManualClock, rep, roster

pytestmark = pytest.mark.integration


async def read_topic(settings: Settings, name: str, count: int, timeout_s: float = 20.0) -> list[bytes]:
    async with TopicReader.from_settings(settings, name) as reader:
        await reader.wait_for(lambda: len(reader.records) >= count, timeout_s, f"{count} records on {name}")
    return [record.value for record in reader.records]


async def test_service_acks_over_http_and_publishes_sla_reassignments(settings: Settings, clock: ManualClock):
    await ensure_topics(settings, (topics.ACTIONS, topics.LEAD_UPDATES))
    service = AssignmentService(
        settings, roster(rep("alice"), rep("bob"), ack_within_s=60), clock=clock, interval_s=0.05
    )
    await service.start()
    try:
        base = f"http://127.0.0.1:{service.port}"
        await service.assigner.assign("acked", {"traits": {"name": "Grace"}})
        await service.assigner.assign("ignored", {"traits": {"name": "Ada"}})
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/leads/acked/ack", json={"rep_id": "alice"}) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            clock.advance(61)
            actions = [Action.from_json(v) for v in await read_topic(settings, topics.ACTIONS, 3)]
            async with http.get(f"{base}/metrics") as resp:
                assert 'nudge_sla_breaches_total{outcome="reassigned"}' in await resp.text()
    finally:
        await service.stop()
    assert {(a.connector, a.template) for a in actions} == {
        ("slack", "lead_reassigned"),
        ("email", "lead_assigned"),
        ("email", "lead_reassigned_away"),
    }
    assert {a.lead_id for a in actions} == {"ignored"}  # the acknowledged lead stayed put
    [update] = [orjson.loads(v) for v in await read_topic(settings, topics.LEAD_UPDATES, 1)]
    # round robin gave "acked" to alice and "ignored" to bob; bob missed the SLA, so it moved to alice
    assert (update["kind"], update["rep"]["id"], update["previous_rep_id"]) == ("reassigned", "alice", "bob")
