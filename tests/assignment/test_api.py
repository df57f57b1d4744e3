"""The /v1 API served by a real aiohttp server on loopback, called with a real HTTP client, against real Redis:
bearer token, `rep_id` required and checked, no roster or owner in error bodies, profile only for the owner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.assignment.conftest import TOKEN, ManualClock, RepsWeb, rep, roster, serve_reps

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(redis_client, clock: ManualClock) -> AsyncIterator[RepsWeb]:
    async with serve_reps(redis_client, roster(rep("a"), rep("b"), ack_within_s=60), clock) as web:
        yield web


async def test_every_call_needs_the_bearer_token(served: RepsWeb):
    await served.assigner.assign("lead-1", {})
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):  # fmt: skip
            async with http.post(f"{served.base}/v1/leads/lead-1/ack", json={"rep_id": "a"}, headers=headers) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
                assert await r.json() == {"error": "unauthorized"}
            async with http.get(f"{served.base}/v1/leads/lead-1?rep_id=a", headers=headers) as r:
                assert r.status == 401
    assert (await served.assigner.owner("lead-1")).acked_at_ms is None  # nothing changed


async def test_ack_needs_the_owners_rep_id_and_stops_the_sla_clock(served: RepsWeb, clock: ManualClock):
    await served.assigner.assign("lead-1", {"traits": {"email": "x@y.io"}})
    url = f"{served.base}/v1/leads/lead-1/ack"
    async with aiohttp.ClientSession(headers=served.bearer) as http:
        async with http.post(url) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "rep_id_required"
        async with http.post(url, json={"rep_id": "b"}) as resp:
            body = await resp.json()
            assert resp.status == 409 and body["error"] == "not_owner"
            assert "a" not in body["detail"].split() and "'a'" not in body["detail"]  # the owner is not named
        async with http.post(url, json={"rep_id": "a"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"lead_id": "lead-1", "rep_id": "a", "acked": True, "already": False}
        async with http.post(f"{url}?rep_id=a") as resp:
            assert resp.status == 200 and (await resp.json())["already"] is True
        async with http.post(f"{served.base}/v1/leads/nobody/ack", json={"rep_id": "a"}) as resp:
            assert resp.status == 404
        async with http.post(url, data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    clock.advance(3600)
    assert await served.assigner.due_sla_breaches() == []
    [_, acked] = await served.assigner.store.history("lead-1")
    assert (acked["event"], acked["rep"], acked["by"]) == ("acked", "a", "api")


async def test_availability_unknown_rep_does_not_list_the_roster(served: RepsWeb):
    async with aiohttp.ClientSession(headers=served.bearer) as http:
        async with http.put(f"{served.base}/v1/reps/a/availability", json={"status": "away"}) as resp:
            assert resp.status == 200 and await resp.json() == {"rep_id": "a", "available": False}
        assert {(await served.assigner.assign(f"l{i}", {})).rep_id for i in range(3)} == {"b"}
        async with http.post(f"{served.base}/v1/reps/a/availability", json={"available": True}) as resp:
            assert resp.status == 200
        async with http.put(f"{served.base}/v1/reps/zed/availability", json={"status": "away"}) as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": "unknown_rep", "detail": "no such rep in the roster"}
        async with http.put(f"{served.base}/v1/reps/a/availability", json={"status": "gone"}) as resp:
            assert resp.status == 400
    assert await served.assigner.store.availability() == {"a": True}


async def test_profile_only_for_the_rep_who_owns_the_lead(served: RepsWeb, redis_client):
    await redis_client.hset("nudge:profile:lead-7", mapping={"email": "x@y.io", "company": '{"name": "Acme"}'})
    await served.assigner.assign("lead-7", {})
    async with aiohttp.ClientSession(headers=served.bearer) as http:
        async with http.get(f"{served.base}/v1/leads/lead-7?rep_id=a") as resp:
            body = await resp.json()
        assert resp.status == 200
        assert body["owner"]["rep"]["id"] == "a" and body["profile"]["email"] == "x@y.io"
        assert [h["event"] for h in body["history"]] == ["assigned"]
        answers = []
        for query in ("rep_id=b", "rep_id=zed"):
            async with http.get(f"{served.base}/v1/leads/lead-7?{query}") as resp:
                answers.append((resp.status, await resp.text()))
        async with http.get(f"{served.base}/v1/leads/unknown?rep_id=b") as resp:
            answers.append((resp.status, await resp.text()))
        async with http.get(f"{served.base}/v1/leads/lead-7") as resp:
            assert resp.status == 400
    # someone else's lead and a lead that does not exist get the same answer, without any profile data
    assert set(answers) == {answers[0]} and answers[0][0] == 404
    assert "x@y.io" not in answers[0][1] and "Acme" not in answers[0][1]


async def test_pass_release_and_reassign_endpoints(served: RepsWeb):
    assigner = served.assigner
    await assigner.assign("l1", {"traits": {"name": "Ada"}})  # a
    async with aiohttp.ClientSession(headers=served.bearer) as http:
        async with http.post(f"{served.base}/v1/leads/l1/pass", json={"rep_id": "b"}) as resp:
            assert resp.status == 409
        async with http.post(f"{served.base}/v1/leads/l1/pass", json={"rep_id": "a"}) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "moved"
        assert (await assigner.owner("l1")).rep_id == "b"
        notes = {(n.connector, n.template) for n in served.sent}
        assert ("email", "lead_assigned") in notes and ("slack", "lead_reassigned") in notes
        async with http.post(f"{served.base}/v1/leads/l1/reassign", json={"rep_id": "a"}) as resp:
            assert resp.status == 200 and (await resp.json())["reassigned"] is True
        async with http.post(f"{served.base}/v1/leads/l1/reassign", json={"rep_id": "nobody"}) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "unknown_rep"
        async with http.post(f"{served.base}/v1/leads/l1/release", json={"rep_id": "b"}) as resp:
            assert resp.status == 409
        async with http.post(f"{served.base}/v1/leads/l1/release", json={"rep_id": "a"}) as resp:
            assert resp.status == 200
        assert await assigner.owner("l1") is None
    events = [(h["event"], h.get("by")) for h in await assigner.store.history("l1")]
    assert events == [("assigned", "api"), ("reassigned", "api"), ("reassigned", "api"), ("released", "api")]
