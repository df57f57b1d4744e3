"""Signed one-click links: the pure signer, then the real pages on loopback against real Redis. An acknowledge
through a signed link stops the SLA clock; a forged, tampered, misused or expired link changes nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from engine.assignment.links import DEV_SECRET, LinkError, RepLinks
from engine.config import ConfigError, Settings
from tests.assignment.conftest import ManualClock, RepsWeb, rep, roster, serve_reps

LEAD = {"traits": {"name": "Ada Lovelace", "email": "ada@example.org", "company": "Engines Ltd"}, "score": 91,
        "stage": "sql", "explanation": "pricing viewed 3 times"}  # fmt: skip


def without_nonces(page: str) -> str:
    """The page without its per-response CSP nonces: random text that may spell anything short."""
    return re.sub(r'nonce="[^"]*"', 'nonce=""', page)


def params_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_a_link_works_only_for_its_purpose_rep_lead_and_time(clock: ManualClock):
    links = RepLinks(b"k" * 32, "https://reps.example.com/", 600, clock=clock)
    url = links.url("ack", "alice", "lead/1 & co")
    assert url.startswith("https://reps.example.com/links/ack?lead=lead%2F1+%26+co&rep=alice&exp=")
    good = params_of(url)
    assert links.verify(good, "ack").lead_id == "lead/1 & co"

    def reason(params: dict[str, str], purpose: str = "ack") -> str:
        with pytest.raises(LinkError) as info:
            links.verify(params, purpose)
        return info.value.reason

    assert reason(good, "pass") == "forged"  # an ack link cannot pass the lead
    assert reason({**good, "rep": "bob"}) == "forged"
    assert reason({**good, "lead": "lead-2"}) == "forged"
    assert reason({**good, "exp": str(int(good["exp"]) + 3600)}) == "forged"  # extending the expiry breaks it
    assert reason({**good, "sig": good["sig"][:-2] + "AA"}) == "forged"
    assert reason({**good, "sig": "!!"}) in ("malformed", "forged")
    assert reason({k: v for k, v in good.items() if k != "sig"}) == "malformed"
    assert reason({**good, "exp": "soon"}) == "malformed"
    other_key = RepLinks(b"x" * 32, "https://reps.example.com", 600, clock=clock)
    assert reason(params_of(other_key.url("ack", "alice", "lead/1 & co"))) == "forged"
    clock.advance(601)
    assert reason(good) == "expired"
    signin = params_of(links.signin_url("alice", 60))
    assert links.verify(signin, "signin").rep_id == "alice"
    assert reason(signin, "ack") == "malformed"  # no lead in a sign-in link


def test_the_secret_is_required_outside_the_dev_profile():
    with pytest.raises(ConfigError, match="NUDGE_REPS_LINK_SECRET"):
        RepLinks.from_settings(Settings(broker_profile="kafka"))
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        RepLinks.from_settings(Settings(broker_profile="kafka", reps_link_secret="short"))
    assert RepLinks.from_settings(Settings(broker_profile="kafka", reps_link_secret="s" * 32)).ttl_s == 604800
    dev = RepLinks.from_settings(Settings(broker_profile="dev"))
    assert dev.verify(params_of(dev.signin_url("a")), "signin")  # the dev secret works in dev only
    assert DEV_SECRET not in dev.signin_url("a")


@pytest.fixture
async def served(redis_client, clock: ManualClock) -> AsyncIterator[RepsWeb]:
    async with serve_reps(redis_client, roster(rep("alice"), rep("bob"), ack_within_s=600), clock) as web:
        yield web


@pytest.mark.integration
async def test_acknowledging_through_a_signed_link_stops_the_sla_clock(served: RepsWeb, clock: ManualClock):
    assignment = await served.assigner.assign("ada", LEAD)
    ack = assignment.links["ack"]
    async with aiohttp.ClientSession() as http:
        async with http.get(ack) as resp:  # what a mail scanner or a chat unfurl does: nothing changes
            page = await resp.text()
            assert resp.status == 200 and "Acknowledge this lead?" in page and "Ada Lovelace" in page
            assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
        assert (await served.assigner.owner("ada")).acked_at_ms is None
        async with http.post(ack.split("?")[0], data=params_of(ack)) as resp:
            assert resp.status == 200 and "The SLA clock stopped" in await resp.text()
    owner = await served.assigner.owner("ada")
    assert owner.acked_at_ms == int(clock() * 1000)
    clock.advance(3600)
    assert await served.assigner.due_sla_breaches() == []
    assert (await served.assigner.store.history("ada"))[-1] | {"at_ms": 0} == {
        "at_ms": 0, "event": "acked", "by": "link", "rep": "alice",
    }  # fmt: skip


@pytest.mark.integration
async def test_a_forged_or_expired_link_changes_nothing(served: RepsWeb, clock: ManualClock):
    assignment = await served.assigner.assign("ada", LEAD)
    good = params_of(assignment.links["ack"])
    passing = params_of(assignment.links["pass"])
    history = await served.assigner.store.history("ada")
    forged = [
        {**good, "sig": good["sig"][::-1]},
        {**good, "rep": "bob"},  # bob is a rep too, but the link was signed for alice
        {**good, "lead": "someone-else"},
        {**good, "exp": str(int(good["exp"]) + 86400)},
        {k: v for k, v in good.items() if k != "sig"},
    ]
    async with aiohttp.ClientSession() as http:
        for params in forged:
            for method in ("GET", "POST"):
                kwargs = {"params": params} if method == "GET" else {"data": params}
                async with http.request(method, f"{served.base}/links/ack", **kwargs) as resp:
                    page = await resp.text()
                    assert resp.status == 403, (method, params)
                    shown = without_nonces(page)  # a random CSP nonce may contain "91" (failed once)
                    assert "Ada" not in shown and "alice" not in shown and "91" not in shown
        async with http.post(f"{served.base}/links/ack", data=passing) as resp:  # a pass link used to ack
            assert resp.status == 403
        clock.advance(3601)  # the links' lifetime in serve_reps is one hour
        async with http.post(f"{served.base}/links/ack", data=good) as resp:
            assert resp.status == 403 and "expired" in await resp.text()
    assert await served.assigner.store.history("ada") == history
    owner = await served.assigner.owner("ada")
    assert (owner.rep_id, owner.acked_at_ms) == ("alice", None)
    assert [b.lead_id for b in await served.assigner.due_sla_breaches()] == ["ada"]  # the clock still runs


@pytest.mark.integration
async def test_a_pass_link_moves_the_lead_and_an_old_link_does_nothing(served: RepsWeb):
    assignment = await served.assigner.assign("ada", LEAD)
    async with aiohttp.ClientSession() as http:
        url = assignment.links["pass"]
        async with http.post(url.split("?")[0], data=params_of(url)) as resp:
            assert resp.status == 200 and "Another rep gets it" in await resp.text()
        assert (await served.assigner.owner("ada")).rep_id == "bob"
        for link in (assignment.links["ack"], url):  # alice's links no longer act on bob's lead
            async with http.post(link.split("?")[0], data=params_of(link)) as resp:
                page = await resp.text()
                assert resp.status == 409 and "no longer yours" in page and "bob" not in page.lower()
            async with http.get(link) as resp:
                assert resp.status == 409 and "Ada" not in await resp.text()
    assert (await served.assigner.owner("ada")).acked_at_ms is None
    templates = {(a.connector, a.template, a.payload.get("to")) for a in served.sent}
    assert ("email", "lead_assigned", "bob@example.com") in templates
