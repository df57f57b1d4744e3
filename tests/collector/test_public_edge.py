"""The collector's public edge on the real stack (collector on loopback, real broker and Redis): what a visitor
holding the public browser key can and cannot do to other leads, the limits on growth, and the endpoints
analytics.js needs besides tracking. The end-to-end consequences (the next nudge) are in test_end_to_end.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
import requests

from engine.collector.app import create_app
from engine.collector.identity import (
    alias_key,
    client_alias_key,
    known_key,
    profile_key,
    read_profile,
)
from engine.collector.trust import UserHashes
from engine.config import Settings
from engine.events import format_ts

from .conftest import SERVER_KEY, USER_HASH_SECRET, WRITE_KEY, ServerThread
from .test_bad_input import assert_refused, auth, post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def now_ms() -> int:
    return int(time.time() * 1000)


def signed(user_id: str) -> str:
    return UserHashes.sign(USER_HASH_SECRET, user_id)


def identify(user_id: str, message_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user_id, "messageId": message_id, **extra}


@pytest.fixture
def store(collector_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(collector_settings.redis_url)
    try:
        yield client
    finally:
        client.close()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the collector's /metrics (0 when absent); the registry is shared by the tests of this process."""
    text = requests.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def started(settings: Settings) -> ServerThread:
    return ServerThread(lambda: create_app(settings)).start()


# --- identity: what a browser event may change ------------------------------------------------------------------


def test_a_browser_identify_cannot_change_a_known_leads_email_phone_or_consent(
    collector, store, read_clickstream
) -> None:
    url = collector.url
    server_traits = {"email": "victim@example.com", "phone": "+33100", "consent": True, "name": "Vic"}
    assert post(url, "/v1/identify", identify("victim", "srv-1", traits=server_traits), auth(SERVER_KEY)).ok
    attack = {"email": "attacker@evil.example", "Phone": "+1999", "marketing_consent": True, "unsubscribed": False,
              "E-mail": "x@evil.example", "name": "Vic", "plan": "pro"}
    for n, context in enumerate([{}, {"userHash": "0" * 64}, {"userHash": signed("someone-else")},
                                 {"nudge": {"trusted": True, "auth": "server"}}]):
        body = identify("victim", f"web-{n}", traits=attack, context={**context, "traits": attack})
        assert post(url, "/v1/identify", body, auth(WRITE_KEY)).json() == {"success": True}
    records = {r.value["messageId"]: r.value for r in read_clickstream(5)}
    for n in range(4):
        web = records[f"web-{n}"]
        assert web["context"]["nudge"] == {"trusted": False, "auth": "client"}
        assert "userHash" not in web["context"]
        for where in (web["traits"], web["context"]["traits"]):
            assert where == {"name": "Vic", "plan": "pro", "unverified": {
                "email": "attacker@evil.example", "Phone": "+1999", "marketing_consent": True, "unsubscribed": False,
                "E-mail": "x@evil.example"}}
    profile = read_profile(store.hgetall(profile_key("victim")))
    assert {k: profile[k] for k in server_traits} == server_traits  # the server's identity stands
    assert profile["plan"] == "pro"  # other traits are the visitor's to set
    assert metric(url, "nudge_collector_events_total", outcome="untrusted_traits", type="identify") >= 4
    assert metric(url, "nudge_collector_events_total", outcome="bad_user_hash", type="identify") >= 2


def test_a_signed_browser_identify_is_trusted_with_its_own_identity(collector, store, read_clickstream) -> None:
    body = identify("shopper", "signed-1", traits={"email": "me@example.com"},
                    context={"userHash": signed("shopper").upper()})  # hex in either case
    assert post(collector.url, "/v1/i", {**body, "writeKey": WRITE_KEY}).json() == {"success": True}
    (record,) = read_clickstream(1)
    assert record.value["context"] == {"nudge": {"trusted": True, "auth": "user_hash"}}
    assert record.value["traits"] == {"email": "me@example.com"}
    assert read_profile(store.hgetall(profile_key("shopper")))["email"] == "me@example.com"
    assert store.exists(known_key("shopper"))


def test_a_browser_alias_of_a_known_user_is_refused(collector, store, read_clickstream) -> None:
    url = collector.url
    assert post(url, "/v1/track", {"type": "track", "event": "Viewed", "userId": "victim-a", "messageId": "v0"},
                auth(SERVER_KEY)).ok
    takeover = {"type": "alias", "previousId": "victim-a", "userId": "attacker-a", "messageId": "a1"}
    for key_auth in (auth(WRITE_KEY), {}):  # Basic auth, or analytics.js's writeKey in the body
        body = takeover if key_auth else {**takeover, "writeKey": WRITE_KEY}
        payload = assert_refused(post(url, "/v1/alias", body, key_auth), 400, "invalid_events")
        assert [(e["index"], e["reason"]) for e in payload["errors"]] == [(0, "merge_refused")]
    # even signed by the attacker's own hash: a hash proves who `userId` is, not who `previousId` is
    signed_takeover = {**takeover, "context": {"userHash": signed("attacker-a")}}
    assert_refused(post(url, "/v1/a", {**signed_takeover, "writeKey": WRITE_KEY}), 400, "invalid_events")
    # in a batch: the whole batch is refused, nothing written
    batch = {"batch": [{"type": "track", "event": "Viewed", "anonymousId": "anon-x", "messageId": "b1"}, takeover]}
    payload = assert_refused(post(url, "/v1/batch", batch, auth(WRITE_KEY)), 400, "invalid_events")
    assert [(e["index"], e["reason"]) for e in payload["errors"]] == [(1, "merge_refused")]
    # the victim's events still go to the victim
    assert post(url, "/v1/track", {"type": "track", "event": "Viewed", "userId": "victim-a", "messageId": "v1"},
                auth(WRITE_KEY)).ok
    # a browser alias of the visitor's own, unclaimed anonymous id is fine; the server may merge anyone
    own = {"type": "alias", "previousId": "anon-own", "userId": "attacker-a", "messageId": "a2"}
    assert post(url, "/v1/alias", own, auth(WRITE_KEY)).ok
    merge = {"type": "alias", "previousId": "victim-a", "userId": "victim-a-crm", "messageId": "a3"}
    assert post(url, "/v1/alias", merge, auth(SERVER_KEY)).ok
    records = {r.value["messageId"]: r for r in read_clickstream(4, settle_s=0.5)}
    assert set(records) == {"v0", "v1", "a2", "a3"}
    assert records["v1"].key == "victim-a"
    assert store.get(client_alias_key("anon-own")) == b"attacker-a"
    assert store.get(alias_key("victim-a")) == b"victim-a-crm"
    assert not store.exists(alias_key("anon-own"), client_alias_key("victim-a"))


def test_a_browser_identify_never_merges_a_known_or_claimed_id(collector, store, read_clickstream) -> None:
    url = collector.url
    # victim-b is a known user; anon-b was claimed by victim-b when they logged in
    assert post(url, "/v1/identify", identify("victim-b", "s1", anonymousId="anon-b"), auth(SERVER_KEY)).ok
    steal_user = identify("attacker-b", "w1", anonymousId="victim-b")  # merge a known user: never
    steal_anon = identify("attacker-b", "w2", anonymousId="anon-b")  # claimed by someone else: not unsigned
    shared_device = identify("other-b", "w3", anonymousId="anon-b", context={"userHash": signed("other-b")})
    fresh = identify("new-b", "w4", anonymousId="anon-new")  # the visitor's own anonymous id: fine
    for body in (steal_user, steal_anon, shared_device, fresh):
        assert post(url, "/v1/identify", body, auth(WRITE_KEY)).json() == {"success": True}
    records = {r.value["messageId"]: r.value for r in read_clickstream(5)}
    for message_id, source, reason in (("w1", "victim-b", "known_lead"), ("w2", "anon-b", "claimed")):
        refused = records[message_id]
        assert "anonymousId" not in refused and refused["userId"] == "attacker-b"
        assert refused["context"]["nudge"]["refusedMerge"] == {"from": source, "reason": reason}
    assert records["w3"]["anonymousId"] == "anon-b" and "refusedMerge" not in records["w3"]["context"]["nudge"]
    assert records["w4"]["anonymousId"] == "anon-new"
    assert not store.exists(client_alias_key("victim-b"))
    assert store.get(client_alias_key("anon-b")) == b"other-b"  # the signed one took the shared device over
    assert store.get(client_alias_key("anon-new")) == b"new-b"
    assert metric(url, "nudge_collector_events_total", outcome="merge_refused", type="identify") >= 2


def test_a_browser_merge_never_redirects_a_user_ids_events(collector, read_clickstream) -> None:
    """A visitor aliases an id nobody uses yet (a guessable future user id) to themself: that mapping applies to
    anonymous events only, so the real user's events, server or browser, stay theirs once they exist."""
    url = collector.url
    trap = {"type": "alias", "previousId": "user-1001", "userId": "attacker-c", "messageId": "t1"}
    assert post(url, "/v1/alias", trap, auth(WRITE_KEY)).ok
    assert post(url, "/v1/identify", identify("user-1001", "r1", traits={"email": "real@example.com"}),
                auth(SERVER_KEY)).ok
    page = {"type": "page", "name": "Home", "userId": "user-1001", "messageId": "r2"}
    assert post(url, "/v1/page", page, auth(WRITE_KEY)).ok
    anonymous = {"type": "page", "name": "Home", "anonymousId": "user-1001", "messageId": "r3"}
    assert post(url, "/v1/page", anonymous, auth(WRITE_KEY)).ok
    keys = {r.value["messageId"]: r.key for r in read_clickstream(4)}
    assert keys["r1"] == keys["r2"] == "user-1001"
    assert keys["r3"] == "attacker-c"  # only what has no userId follows a browser's merge


def test_far_future_timestamps_cannot_lock_a_profile(collector_settings: Settings, store, read_clickstream) -> None:
    server = started(collector_settings.with_(max_clock_skew_s=0.2))
    try:
        for n, when in enumerate(["2099-12-31T23:59:59Z", now_ms() + 10**9, "2099-01-01T00:00:00+14:00"]):
            body = identify("locked", f"f{n}", timestamp=when, traits={"email": f"old{n}@example.com"})
            assert post(server.url, "/v1/identify", body, auth(SERVER_KEY)).ok
        time.sleep(0.3)  # past the skew bound: the next identify is newer than anything stored
        fresh = identify("locked", "f-new", timestamp=format_ts(now_ms()), traits={"email": "new@example.com"})
        assert post(server.url, "/v1/identify", fresh, auth(SERVER_KEY)).ok
    finally:
        server.stop()
    profile = read_profile(store.hgetall(profile_key("locked")))
    assert profile["email"] == "new@example.com"
    assert profile["_updated_at_ms"] <= now_ms()
    assert len(read_clickstream(4)) == 4


# --- unbounded growth ---------------------------------------------------------------------------------------------


def test_a_flood_from_one_address_gets_429_with_retry_after(collector_settings: Settings, read_clickstream) -> None:
    settings = collector_settings.with_(rate_limit_ip_events_per_s=5.0, rate_limit_ip_burst=20)
    server = started(settings)
    try:
        statuses: list[int] = []
        refusal: requests.Response | None = None
        for n in range(40):
            response = post(server.url, "/v1/track", {"type": "track", "event": "Flood", "anonymousId": "f",
                                                      "messageId": f"flood-{n}"}, auth(WRITE_KEY))
            statuses.append(response.status_code)
            if response.status_code == 429:
                refusal = response
        assert statuses.count(200) in range(20, 24) and statuses.count(429) >= 16, statuses
        assert refusal is not None
        assert refusal.json()["code"] == "rate_limited" and "client address" in refusal.json()["message"]
        assert int(refusal.headers["Retry-After"]) >= 1
        assert refusal.headers["Access-Control-Allow-Origin"] == "*"  # a browser can read it
        # the server key is limited by its key only: a back end sends for everyone from one address
        server_batch = {"batch": [{"type": "track", "event": "S", "userId": f"s{i}", "messageId": f"srv-{i}"}
                                  for i in range(50)]}
        assert post(server.url, "/v1/batch", server_batch, auth(SERVER_KEY)).status_code == 200
        # after Retry-After the address may send again
        time.sleep(int(refusal.headers["Retry-After"]))
        again = post(server.url, "/v1/track", {"type": "track", "event": "Flood", "anonymousId": "f",
                                               "messageId": "after"}, auth(WRITE_KEY))
        assert again.status_code == 200
        limited = metric(server.url, "nudge_collector_events_total", outcome="rate_limited", type="unknown")
        assert limited >= statuses.count(429)
    finally:
        server.stop()
    accepted = statuses.count(200) + 50 + 1
    assert len(read_clickstream(accepted, settle_s=0.5)) == accepted  # nothing of a 429 was written


def test_a_flood_on_one_write_key_gets_429_and_a_batch_has_an_event_cap(
    collector_settings: Settings, read_clickstream
) -> None:
    settings = collector_settings.with_(rate_limit_key_events_per_s=10.0, rate_limit_key_burst=100,
                                        collector_max_batch_events=60)
    server = started(settings)
    try:
        def batch(n: int, size: int) -> dict:
            return {"batch": [{"type": "track", "event": "K", "userId": "k", "messageId": f"k-{n}-{i}"}
                              for i in range(size)]}

        too_many = assert_refused(post(server.url, "/v1/batch", batch(0, 61), auth(SERVER_KEY)), 400,
                                  "too_many_events")
        assert "60" in too_many["message"]
        assert post(server.url, "/v1/batch", batch(1, 60), auth(SERVER_KEY)).status_code == 200
        refused = post(server.url, "/v1/batch", batch(2, 60), auth(SERVER_KEY))
        assert refused.status_code == 429 and "write key" in refused.json()["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 3  # 20 events missing at 10/s
        # another key has its own bucket
        assert post(server.url, "/v1/batch", {**batch(3, 5), "writeKey": WRITE_KEY}).status_code == 200
    finally:
        server.stop()
    assert len(read_clickstream(65, settle_s=0.5)) == 65


def test_traits_per_identify_and_fields_per_profile_are_capped_and_profiles_expire(
    collector_settings: Settings, store, read_clickstream
) -> None:
    server = started(collector_settings.with_(profile_max_fields=150, collector_max_traits=40))
    try:
        url = server.url
        too_many = identify("big", "cap-0", traits={f"t{i}": i for i in range(41)})
        payload = assert_refused(post(url, "/v1/identify", too_many, auth(SERVER_KEY)), 400, "invalid_events")
        assert [e["reason"] for e in payload["errors"]] == ["too_many_traits"]
        for n in range(6):  # 240 distinct traits over six identifies
            body = identify("big", f"cap-{n + 1}", traits={f"n{n}-{i}": i for i in range(40)})
            assert post(url, "/v1/identify", body, auth(SERVER_KEY)).ok
        body = identify("big", "cap-update", traits={"n0-0": "updated"})  # known fields still update
        assert post(url, "/v1/identify", body, auth(SERVER_KEY)).ok
        assert metric(url, "nudge_collector_events_total", outcome="profile_capped", type="identify") >= 3
    finally:
        server.stop()
    assert store.hlen(profile_key("big")) == 150
    assert read_profile(store.hgetall(profile_key("big")))["n0-0"] == "updated"
    ttl_days = store.ttl(profile_key("big")) / 86400
    assert 399.9 < ttl_days <= 400  # NUDGE_PROFILE_TTL_DAYS, refreshed by every write
    assert 399.9 < store.ttl(known_key("big")) / 86400 <= 400
    assert len(read_clickstream(7)) == 7


@pytest.mark.parametrize("bad", [".", "..", " ", "\t", "x" * 257])
@pytest.mark.parametrize("field", ["userId", "anonymousId", "previousId"])
def test_unusable_lead_ids_are_refused(collector, field: str, bad: str) -> None:
    body = {"type": "alias", "userId": "u", "anonymousId": "a", "previousId": "p", "messageId": "m", field: bad}
    payload = assert_refused(post(collector.url, "/v1/alias", body, auth(SERVER_KEY)), 400, "invalid_events")
    assert [e["reason"] for e in payload["errors"]] == ["bad_id"]


# --- conformance ----------------------------------------------------------------------------------------------------


def test_telemetry_is_accepted_with_cors_and_dropped(collector, read_clickstream) -> None:
    url, origin = collector.url, {"Origin": "https://shop.example"}
    preflight = requests.options(url + "/v1/m", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
    series = {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1,
                          "tags": {"library": "analytics.js", "library_version": "next-1.84.3"}}]}
    answer = requests.post(url + "/v1/m", data=orjson.dumps(series), headers={**origin, "Content-Type": "text/plain"})
    assert answer.status_code == 204 and answer.headers["Access-Control-Allow-Origin"] == "*" and not answer.content
    assert requests.post(url + "/v1/m", data=b"not json at all", headers=origin).status_code == 204
    assert requests.post(url + "/v1/m", data=b"x" * 40_000, headers=origin).status_code == 400  # bounded
    assert read_clickstream(1, timeout_s=1.0, settle_s=0) == []  # telemetry is not an event


def test_the_settings_document_analytics_js_loads(collector_settings: Settings, collector) -> None:
    origin = {"Origin": "https://shop.example"}
    answer = requests.get(f"{collector.url}/v1/projects/{WRITE_KEY}/settings", headers=origin)
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["Cache-Control"] == "no-store"  # derived from the Host header
    document = answer.json()
    host = collector.url.removeprefix("http://")
    assert document["integrations"] == {"Segment.io": {
        "apiKey": WRITE_KEY, "apiHost": host + "/v1", "protocol": "http", "unbundledIntegrations": [],
        "addBundledMetadata": False, "maybeBundledConfigIds": {}}}
    assert document["metrics"]["sampleRate"] == 0  # analytics.js sends no telemetry at all
    assert document["metrics"]["host"] == host + "/v1"  # and would send it here, never to Segment
    for key in (SERVER_KEY, "unknown-key"):  # a server key never belongs in a page
        assert_refused(requests.get(f"{collector.url}/v1/projects/{key}/settings"), 404, "unknown_write_key")
    public = started(collector_settings.with_(collector_public_url="https://track.shop.example/",
                                              collector_telemetry_sample_rate=0.5))
    try:
        answer = requests.get(f"{public.url}/v1/projects/{WRITE_KEY}/settings", headers={"Host": "evil.example"})
    finally:
        public.stop()
    segment_io = answer.json()["integrations"]["Segment.io"]
    assert (segment_io["apiHost"], segment_io["protocol"]) == ("track.shop.example/v1", "https")
    assert answer.json()["metrics"] == {"sampleRate": 0.5, "host": "track.shop.example/v1", "flushTimer": 30000}
    assert answer.headers["Cache-Control"] == "public, max-age=300"


def test_a_message_id_repeated_inside_one_request_counts_as_duplicate(collector, read_clickstream) -> None:
    before = metric(collector.url, "nudge_collector_events_total", outcome="duplicate", type="screen")
    event = {"type": "screen", "name": "Home", "userId": "dup", "messageId": "same"}
    batch = {"batch": [event, event, {**event, "name": "Other"}, {**event, "messageId": "other"}]}
    assert post(collector.url, "/v1/batch", batch, auth(WRITE_KEY)).json() == {"success": True}
    assert metric(collector.url, "nudge_collector_events_total", outcome="duplicate", type="screen") - before == 2
    assert sorted(r.value["messageId"] for r in read_clickstream(2, settle_s=0.5)) == ["other", "same"]
