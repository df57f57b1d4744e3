"""HTTP endpoints served by a real aiohttp server on loopback, called with a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from engine.assignment import Assigner
from engine.assignment.api import create_app
from tests.assignment.conftest import ManualClock, rep, roster

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(redis_client, clock: ManualClock) -> AsyncIterator[tuple[str, Assigner]]:
    assigner = Assigner(redis_client, roster(rep("a"), rep("b"), ack_within_s=60), clock=clock)
    runner = web.AppRunner(create_app(assigner))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", assigner
    finally:
        await runner.cleanup()


async def test_ack_endpoint_stops_the_sla_clock(served, clock: ManualClock):
    base, assigner = served
    await assigner.assign("lead-1", {"traits": {"email": "x@y.io"}})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/leads/lead-1/ack", json={"rep_id": "b"}) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"] == "not_owner"
        async with http.post(f"{base}/v1/leads/lead-1/ack", json={"rep_id": "a"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"lead_id": "lead-1", "rep_id": "a", "acked": True, "already": False}
        async with http.post(f"{base}/v1/leads/lead-1/ack?rep_id=a") as resp:
            assert resp.status == 200 and (await resp.json())["already"] is True
        async with http.post(f"{base}/v1/leads/nobody/ack", json={}) as resp:
            assert resp.status == 404
        async with http.post(f"{base}/v1/leads/lead-1/ack", data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    clock.advance(3600)
    assert await assigner.due_sla_breaches() == []


async def test_unacknowledged_lead_is_due_but_acked_one_is_not(served, clock: ManualClock):
    base, assigner = served
    await assigner.assign("acked", {})
    await assigner.assign("ignored", {})
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/leads/acked/ack") as resp:
        assert resp.status == 200  # no rep_id: the current owner acknowledges
    clock.advance(61)
    assert [b.lead_id for b in await assigner.due_sla_breaches()] == ["ignored"]


async def test_availability_endpoint(served):
    base, assigner = served
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/v1/reps/a/availability", json={"status": "away"}) as resp:
            assert resp.status == 200 and await resp.json() == {"rep_id": "a", "available": False}
        assert {(await assigner.assign(f"l{i}", {})).rep_id for i in range(3)} == {"b"}
        async with http.post(f"{base}/v1/reps/a/availability", json={"available": True}) as resp:
            assert resp.status == 200
        async with http.put(f"{base}/v1/reps/zed/availability", json={"status": "away"}) as resp:
            assert resp.status == 404 and "known: a, b" in (await resp.json())["detail"]
        async with http.put(f"{base}/v1/reps/a/availability", json={"status": "gone"}) as resp:
            assert resp.status == 400
    assert await assigner.store.availability() == {"a": True}


async def test_get_lead_shows_owner_history_and_profile(served, redis_client):
    base, assigner = served
    await redis_client.hset(
        "nudge:profile:lead-7", mapping={"email": "x@y.io", "company": '{"name": "Acme"}'}
    )
    await assigner.assign("lead-7", {})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/leads/lead-7") as resp:
            body = await resp.json()
        assert resp.status == 200
        assert body["owner"]["rep"]["id"] == "a"
        assert body["profile"]["email"] == "x@y.io"
        assert [h["event"] for h in body["history"]] == ["assigned"]
        async with http.get(f"{base}/v1/leads/unknown") as resp:
            assert resp.status == 404
