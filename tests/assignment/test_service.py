"""`AssignmentService` against the real dev stack (Tansu + Redis): ack over HTTP, SLA notifications produced to
Kafka, the queue drained in order as capacity frees (and alerted once), every change relayed to `lead-updates`."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from engine.assignment.service import AssignmentService
from engine.clickhouse.sink import ensure_topics
from engine.config import Settings
from engine.core.model import Action
from engine.kafka import topics
from engine.testing import TopicReader, wait_until
from tests.assignment.conftest import TOKEN, ManualClock, rep, roster

pytestmark = pytest.mark.integration
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def read_topic(settings: Settings, name: str, count: int, timeout_s: float = 20.0) -> list[bytes]:
    async with TopicReader.from_settings(settings, name) as reader:
        await reader.wait_for(lambda: len(reader.records) >= count, timeout_s, f"{count} records on {name}")
    return [record.value for record in reader.records]


async def test_service_acks_over_http_and_publishes_sla_reassignments(settings: Settings, clock: ManualClock):
    await ensure_topics(settings, (topics.ACTIONS, topics.LEAD_UPDATES))
    service = AssignmentService(
        settings.with_(reps_api_token=TOKEN), roster(rep("alice"), rep("bob"), ack_within_s=60), clock=clock,
        interval_s=0.05,
    )  # fmt: skip
    await service.start()
    try:
        base = f"http://127.0.0.1:{service.port}"
        await service.assigner.assign("acked", {"traits": {"name": "Grace"}})
        await service.assigner.assign("ignored", {"traits": {"name": "Ada"}})
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/leads/acked/ack", json={"rep_id": "alice"}, headers=BEARER) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            clock.advance(61)
            actions = [Action.from_json(v) for v in await read_topic(settings, topics.ACTIONS, 3)]
            async with http.get(f"{base}/metrics") as resp:
                assert 'nudge_sla_breaches_total{outcome="reassigned"}' in await resp.text()
        updates = [orjson.loads(v) for v in await read_topic(settings, topics.LEAD_UPDATES, 4)]
    finally:
        await service.stop()
    assert {(a.connector, a.template) for a in actions} == {
        ("slack", "lead_reassigned"),
        ("email", "lead_assigned"),
        ("email", "lead_reassigned_away"),
    }
    assert {a.lead_id for a in actions} == {"ignored"}  # the acknowledged lead stayed put
    by_lead = {lead: [u["kind"] for u in updates if u["lead_id"] == lead] for lead in ("acked", "ignored")}
    assert by_lead == {"acked": ["assigned", "acked"], "ignored": ["assigned", "reassigned"]}  # in order per lead
    # round robin gave "acked" to alice and "ignored" to bob; bob missed the SLA, so it moved to alice
    moved = next(u for u in updates if u["kind"] == "reassigned")
    assert (moved["rep"], moved["previous_rep"], moved["reason"], moved["by"]) == ("alice", "bob", "sla", "sla")
    assert len({u["change_id"] for u in updates}) == 4


async def test_queued_leads_are_assigned_in_order_as_capacity_frees(settings: Settings, clock: ManualClock):
    await ensure_topics(settings, (topics.ACTIONS, topics.LEAD_UPDATES))
    team = roster(
        rep("alice", capacity=1), rep("bob", capacity=1), ack_within_s=600, queue_alert_after_s=120,
    )  # fmt: skip
    service = AssignmentService(settings, team, clock=clock, interval_s=0.05)
    await service.start()
    assigner = service.assigner
    try:
        assert (await assigner.assign_or_queue("first", {"score": 50})).rep_id == "alice"
        assert (await assigner.assign_or_queue("second", {"score": 50})).rep_id == "bob"
        arrivals = [("low", 0, 10), ("hot", 0, 90), ("vip", 20, 5), ("hot-later", 0, 90), ("mid", 0, 40)]
        for lead_id, priority, score in arrivals:
            clock.advance(1)
            queued = await assigner.assign_or_queue(lead_id, {"priority": priority, "score": score})
            assert queued.created and queued.queued_at_ms == int(clock() * 1000)
        order = ["vip", "hot", "hot-later", "mid", "low"]
        assert [item.lead_id for item in await assigner.queue()] == order
        assert await assigner.owner("vip") is None  # no owner, so no SLA clock while it waits

        clock.advance(200)  # past queue_alert_after: each waiting lead alerts the team channel once
        alerts = [Action.from_json(v) for v in await read_topic(settings, topics.ACTIONS, 5)]
        assert sorted(a.lead_id for a in alerts) == sorted(order)
        assert {(a.connector, a.template) for a in alerts} == {("slack", "lead_queue_waiting")}
        await asyncio.sleep(0.3)  # more passes of the service: no second alert
        assert len(await read_topic(settings, topics.ACTIONS, 5)) == 5

        owners: list[tuple[str, str]] = []
        waited: dict[str, int | None] = {}
        for done in ("first", "second", "vip", "hot"):  # each release frees one slot: the head of the queue gets it
            released_at = clock()
            former = await assigner.owner(done)
            await assigner.release(done, reason="won", by="dispatcher")  # another process: the wake signal
            head = order[len(owners)]
            await wait_until(lambda h=head: assigner.owner(h), 5, f"{head} assigned")
            new = await assigner.owner(head)
            owners.append((head, new.rep_id))
            waited[head] = new.waited_ms
            assert new.rep_id == former.rep_id and new.assigned_at_ms == int(released_at * 1000)
            assert new.sla_deadline_ms == new.assigned_at_ms + 600_000  # the SLA clock starts at assignment
            assert [i.lead_id for i in await assigner.queue()] == order[len(owners):]
        assert [h for h, _ in owners] == ["vip", "hot", "hot-later", "mid"]
        assert waited["vip"] == 202_000  # joined the queue at +3 s, assigned at +205 s

        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/metrics") as resp:
            text = await resp.text()
        assert "nudge_assignment_queue_length 1.0" in text
        assert "nudge_assignment_wait_seconds_count" in text
        actions = [Action.from_json(v) for v in await read_topic(settings, topics.ACTIONS, 5 + 8)]
        notes = [(a.lead_id, a.connector, a.template) for a in actions if a.template == "lead_assigned"]
        assert sorted(notes) == sorted(
            (lead, connector, "lead_assigned") for lead in order[:4] for connector in ("slack", "email")
        )
        email = next(a for a in actions if a.lead_id == "vip" and a.connector == "email")
        assert "after 3 min in the queue" in email.payload["text"]
        assert email.payload["links"]["ack"].startswith(settings.reps_public_url + "/links/ack?lead=vip&rep=")
        updates = [orjson.loads(v) for v in await read_topic(settings, topics.LEAD_UPDATES, 2 + 5 + 4 + 4)]
    finally:
        await service.stop()
    kinds = [(u["lead_id"], u["kind"]) for u in updates]
    assert kinds.count(("vip", "queued")) == 1 and kinds.count(("vip", "assigned")) == 1
    assigned_vip = next(u for u in updates if u["lead_id"] == "vip" and u["kind"] == "assigned")
    assert (assigned_vip["by"], assigned_vip["waited_ms"]) == ("queue", 202_000)
    assert ("first", "released") in kinds


async def test_with_a_metrics_port_the_main_port_has_no_open_route(settings: Settings, clock: ManualClock):
    service = AssignmentService(settings, roster(rep("a")), clock=clock, interval_s=0.05)
    await service.start(metrics_port=0)
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/healthz"):
                async with http.get(f"http://127.0.0.1:{service.metrics_port}{path}") as resp:
                    assert resp.status == 200
                async with http.get(f"http://127.0.0.1:{service.port}{path}") as resp:
                    assert resp.status == 404
    finally:
        await service.stop()
