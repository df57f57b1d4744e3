"""Every route of `nudge reps serve` refuses a caller without credentials (401/403). The routes are enumerated
from the application itself, so an endpoint added later is covered (or fails here) without editing this test."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from engine.assignment.auth import POLICIES_KEY, Policy
from engine.assignment.service import AssignmentService
from engine.config import Settings
from tests.assignment.conftest import TOKEN, ManualClock, rep, roster

pytestmark = pytest.mark.integration

PUBLIC = {"/metrics", "/healthz"}  # no lead, rep or roster data; served elsewhere with --metrics-port
SAMPLES = {"lead_id": "lead-1", "rep_id": "a", "action": "ack", "purpose": "ack"}
PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")


def sample_path(canonical: str) -> str:
    """A concrete path for a route template: `{lead_id}` → lead-1, `{action:ack|pass}` → ack."""

    def value(match: re.Match[str]) -> str:
        name, pattern = match.group(1), match.group(2)
        return SAMPLES.get(name) or (pattern.split("|")[0] if pattern else "x")

    return PLACEHOLDER.sub(value, canonical)


def endpoints(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, canonical route, sample path) for every route of the app."""
    found = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        found.append((route.method, route.resource.canonical, sample_path(route.resource.canonical)))
    return found


@pytest.fixture
async def service(settings: Settings, redis_client, clock: ManualClock) -> AsyncIterator[tuple[str, web.Application]]:
    """The real service's application (no broker needed to answer HTTP), with a lead that has data to leak."""
    svc = AssignmentService(settings.with_(reps_api_token=TOKEN), roster(rep("a"), rep("b")), clock=clock)
    svc.add_ops_routes(svc.app)
    await svc.assigner.assign("lead-1", {"traits": {"name": "Secret Person", "email": "secret@example.org"}})
    await redis_client.hset("nudge:profile:lead-1", mapping={"email": "secret@example.org"})
    runner = web.AppRunner(svc.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", svc.app
    finally:
        await runner.cleanup()
        await svc.redis.aclose()


async def test_every_route_declares_a_policy_and_only_ops_routes_are_public(service):
    _, app = service
    policies = app[POLICIES_KEY]
    routes = endpoints(app)
    assert len(routes) >= 12
    undeclared = sorted({canonical for _, canonical, _ in routes} - set(policies))
    assert not undeclared, f"routes without an auth policy: {undeclared}"
    assert {c for c, p in policies.items() if p is Policy.PUBLIC} == PUBLIC


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Cookie": "nudge-rep-session=forged-session"},
    ],
    ids=["none", "wrong-token", "not-bearer", "forged-session"],
)
async def test_every_endpoint_refuses_a_caller_without_credentials(service, credentials, redis_client):
    base, app = service
    before = await redis_client.hgetall("nudge:{assign}:owner:lead-1")
    checked = []
    async with aiohttp.ClientSession() as http:
        for method, canonical, path in endpoints(app):
            if canonical in PUBLIC:
                continue
            for accept in ("application/json", "text/html"):
                headers = {**credentials, "Accept": accept}
                async with http.request(method, base + path, headers=headers, json={"rep_id": "a"}) as resp:
                    body = await resp.text()
                assert resp.status in (401, 403), f"{method} {path}: {resp.status} {body[:200]}"
                for secret in ("Secret Person", "secret@example.org", '"a"', "lead-1"):
                    assert secret not in body, f"{method} {path} discloses {secret!r}"
            checked.append(f"{method} {canonical}")
    assert "POST /v1/leads/{lead_id}/ack" in checked and "GET /inbox" in checked and "POST /links/{purpose}" in checked
    assert await redis_client.hgetall("nudge:{assign}:owner:lead-1") == before  # nothing changed anywhere


async def test_ops_routes_carry_no_lead_or_rep_data(service):
    base, _ = service
    async with aiohttp.ClientSession() as http:
        for path in sorted(PUBLIC):
            async with http.get(base + path) as resp:
                body = await resp.text()
            assert resp.status == 200
            assert "lead-1" not in body and "Secret" not in body and 'rep="a"' not in body
