"""The rep's inbox over real HTTP against real Redis: sign-in by signed link, the session cookie's flags, only the
rep's own leads, CSRF on every change, and the actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import pytest

from engine.assignment.auth import COOKIE
from tests.assignment.conftest import ManualClock, RepsWeb, rep, roster, serve_reps

pytestmark = pytest.mark.integration

ADA = {"traits": {"name": "Ada Lovelace", "company": "Engines Ltd"}, "score": 91, "stage": "sql",
       "explanation": "viewed pricing 3 times", "recent": [{"name": "Pricing Viewed"}, {"name": "Demo Requested"}],
       "last_page": "https://shop.example/pricing"}  # fmt: skip
GRACE = {"traits": {"name": "Grace Hopper"}, "score": 40, "stage": "mql"}


@pytest.fixture
async def served(redis_client, clock: ManualClock) -> AsyncIterator[RepsWeb]:
    team = roster(rep("alice"), rep("bob"), ack_within_s=900, strategy="round_robin")
    async with serve_reps(redis_client, team, clock) as web:
        yield web


def browser_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # keep cookies of 127.0.0.1


async def signed_in(served: RepsWeb, http: aiohttp.ClientSession, rep_id: str) -> str:
    """Follow a sign-in link; returns the CSRF token of the inbox page."""
    async with http.get(served.links.signin_url(rep_id, 600), allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/inbox"
    async with http.get(f"{served.base}/inbox") as resp:
        page = await resp.text()
        assert resp.status == 200
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def test_sign_in_sets_a_strict_session_cookie(redis_client, clock: ManualClock):
    for https in (False, True):
        async with serve_reps(redis_client, roster(rep("alice")), clock, https=https) as web:
            url = web.links.signin_url("alice")
            async with browser_session() as http, http.get(url, allow_redirects=False) as resp:
                assert resp.status == 303
                cookie = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE]
            assert cookie["httponly"] is True and cookie["samesite"] == "Lax" and cookie["path"] == "/"
            assert bool(cookie["secure"]) is https
            assert len(cookie.value) >= 40
            assert await redis_client.keys(f"*{cookie.value}*") == []  # Redis keeps only a hash of it


async def test_nothing_without_a_valid_session(served: RepsWeb, clock: ManualClock):
    await served.assigner.assign("ada", ADA)
    forged = served.links.signin_url("alice").replace("rep=alice", "rep=bob")
    expired = served.links.signin_url("alice", 10)
    clock.advance(11)
    async with browser_session() as http:
        for url in (forged, expired):
            async with http.get(url, allow_redirects=False) as resp:
                assert resp.status == 403 and COOKIE not in resp.cookies
        http.cookie_jar.update_cookies({COOKIE: "made-up"})
        for path in ("/inbox", "/inbox/leads/ada"):
            async with http.get(f"{served.base}{path}", headers={"Accept": "text/html"}) as resp:
                page = await resp.text()
                assert resp.status == 401 and "Sign in" in page and "Ada" not in page


async def test_the_inbox_shows_the_reps_own_leads_newest_first(served: RepsWeb, clock: ManualClock):
    await served.assigner.assign("ada", ADA)  # alice
    await served.assigner.assign("someone", {"traits": {"name": "Bob's Lead"}})  # bob
    clock.advance(60)
    await served.assigner.assign("grace", GRACE)  # alice, newer
    async with browser_session() as http:
        await signed_in(served, http, "alice")
        async with http.get(f"{served.base}/inbox") as resp:
            page = await resp.text()
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert page.index("Grace Hopper") < page.index("Ada Lovelace")  # newest first
        assert "Bob&#39;s Lead" not in page and "Bob's Lead" not in page
        for shown in ("91", "sql", "viewed pricing 3 times", "Demo Requested · Pricing Viewed",
                      "https://shop.example/pricing", "15 min 0 s left"[:6]):  # fmt: skip
            assert shown in page, shown
        async with http.get(f"{served.base}/inbox/leads/ada") as resp:
            lead = await resp.text()
            assert resp.status == 200 and "Timeline" in lead and "assigned to Alice" in lead
        async with http.get(f"{served.base}/inbox/leads/someone") as resp:
            assert resp.status == 404 and "Bob" not in await resp.text()


async def test_actions_need_the_csrf_token(served: RepsWeb, clock: ManualClock):
    await served.assigner.assign("ada", ADA)  # alice
    await served.assigner.assign("other", {})  # bob
    await served.assigner.assign("grace", GRACE)  # alice
    async with browser_session() as http:
        csrf = await signed_in(served, http, "alice")
        url = f"{served.base}/inbox/leads/ada/ack"
        async with http.post(url, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 403
        async with http.post(url, data={"csrf": "wrong"}) as resp:
            assert resp.status == 403
        assert (await served.assigner.owner("ada")).acked_at_ms is None
        json = {"Accept": "application/json", "X-CSRF-Token": csrf}
        async with http.post(url, headers=json) as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        assert (await served.assigner.owner("ada")).acked_at_ms is not None
        async with http.post(f"{served.base}/inbox/leads/other/release", headers=json) as resp:
            assert resp.status == 409  # bob's lead
        assert (await served.assigner.owner("other")).rep_id == "bob"
        async with http.post(f"{served.base}/inbox/leads/grace/pass", data={"csrf": csrf},
                             allow_redirects=False) as resp:  # fmt: skip
            assert resp.status == 303 and resp.headers["Location"] == "/inbox?done=pass"
        assert (await served.assigner.owner("grace")).rep_id == "bob"
        async with http.post(f"{served.base}/inbox/signout", data={"csrf": csrf}) as resp:
            assert resp.status == 200
        async with http.get(f"{served.base}/inbox") as resp:
            assert resp.status == 401


async def test_a_new_link_secret_ends_every_session(served: RepsWeb, redis_client):
    from engine.assignment.auth import AUTH_KEY, Sessions

    await served.assigner.assign("ada", ADA)
    async with browser_session() as http:
        await signed_in(served, http, "alice")
        auth = served.app[AUTH_KEY]
        auth.sessions = Sessions(redis_client, 3600, key_id="another-secret")  # what a restart with a new secret does
        async with http.get(f"{served.base}/inbox") as resp:
            assert resp.status == 401
