"""The collector's `/v1/unsubscribe` on the real stack (collector on loopback, real broker and Redis): a valid signed
link unsubscribes once, as a trusted `Unsubscribed` event on `clickstream` and in the profile; the page a `GET`
shows changes nothing and names nobody; forged, missing, malformed and expired links get 403 and record nothing.
What the worker and the dispatcher then do with it: tests/integration/test_send_time_recheck.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import redis
import requests

from engine import unsubscribe_links
from engine.collector.app import create_app
from engine.collector.identity import profile_key, read_profile
from engine.collector.unsubscribe import UNSUBSCRIBED_EVENT, message_id, unsubscribe_secrets
from engine.config import ConfigError, Settings
from engine.core import evaluate
from engine.core.evaluate import UNSUBSCRIBED_EVENT as CORE_UNSUBSCRIBED_EVENT
from engine.devstack import free_port
from engine.events import parse_event
from tests.core.helpers import rules

from .conftest import SERVER_KEY, ServerThread
from .test_bad_input import auth, post
from .test_public_edge import metric

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "unsubscribe-secret-0123456789abcdef-0123456789"
OLD_SECRET = "the-previous-unsubscribe-secret-0123456789abcdef"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def collector_settings(collector_settings: Settings) -> Settings:
    return collector_settings.with_(unsubscribe_secret=SECRET, unsubscribe_previous_secrets=(OLD_SECRET,))


@pytest.fixture
def store(collector_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(collector_settings.redis_url)
    try:
        yield client
    finally:
        client.close()


def link(base: str, lead: str, secret: str = SECRET, expiry: int | None = None) -> str:
    expiry = expiry if expiry is not None else unsubscribe_links.expiry_for(time.time())
    return unsubscribe_links.link(base, secret, lead, expiry)


def with_query(url: str, **changes: str | None) -> str:
    """`url` with query parameters replaced (None: removed)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return parts._replace(query=urlencode(query)).geturl()


def unsubscribed_events(records: list) -> list:
    return [r for r in records if r.value.get("event") == UNSUBSCRIBED_EVENT]


def test_the_get_page_asks_and_changes_nothing(collector, store, read_clickstream) -> None:
    lead = "zoe@example.com"  # a lead id may be an address: the page must not show it
    url = link(collector.url, lead)
    page = requests.get(url, timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    body = page.text
    assert '<form method="post">' in body and 'name="List-Unsubscribe" value="One-Click"' in body
    for private in (lead, "zoe", "example.com", unsubscribe_links.signature(SECRET, lead, 0)[:16]):
        assert private not in body
    assert requests.head(url, timeout=5).status_code == 200
    assert read_clickstream(1, timeout_s=1.5) == []
    assert not store.exists(profile_key(lead))


def test_one_click_post_records_a_trusted_unsubscribed_event_and_the_profile_once(
    collector, store, read_clickstream
) -> None:
    lead = "user-7"
    url = link(collector.url, lead)
    before = metric(collector.url, "nudge_unsubscribe_requests_total", result="unsubscribed")
    answer = requests.post(url, data=ONE_CLICK, timeout=5)  # RFC 8058: form-encoded List-Unsubscribe=One-Click
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text and lead not in answer.text
    again = requests.post(url, files={"List-Unsubscribe": (None, "One-Click")}, timeout=5)  # multipart, a retry
    assert again.status_code == 200
    (record,) = unsubscribed_events(read_clickstream(2, timeout_s=3))  # the double click is one event
    assert record.key == lead
    event = record.value
    assert (event["type"], event["userId"], event["properties"]) == ("track", lead, {"source": "unsubscribe_link"})
    assert event["context"]["nudge"] == {"trusted": True, "auth": "unsubscribe_link"}
    parsed = parse_event(event)
    assert parsed.trusted and parsed.lead_id == lead
    profile = read_profile(store.hgetall(profile_key(lead)))
    assert profile["unsubscribed"] is True and profile["unsubscribed_at"]
    assert metric(collector.url, "nudge_unsubscribe_requests_total", result="unsubscribed") == before + 2


def test_the_recorded_event_is_what_the_core_reads_as_an_unsubscribe(collector, read_clickstream) -> None:
    assert UNSUBSCRIBED_EVENT == CORE_UNSUBSCRIBED_EVENT
    assert requests.post(link(collector.url, "u1"), data=ONE_CLICK, timeout=5).status_code == 200
    (record,) = read_clickstream(1)
    ruleset = rules(
        "rules:\n  - id: cart\n    kind: absence\n    when: {event: Product Added}\n    within: 30m\n"
        "    action: {connector: email}\n"
    )
    result = evaluate(ruleset, None, parse_event(record.value))
    assert [(u["kind"], u["marketing"], u["reason"], u["source"]) for u in result.updates] == [
        ("consent", False, "unsubscribed", "unsubscribe")
    ]


def test_a_link_signed_with_the_previous_secret_still_works_and_follows_merges(
    collector, store, read_clickstream
) -> None:
    # the mail went to the anonymous lead; the shop's back end merged it into a user since
    body = {"type": "alias", "previousId": "anon-9", "userId": "user-9", "messageId": "alias-9"}
    assert post(collector.url, "/v1/alias", body, auth(SERVER_KEY)).ok
    assert requests.post(link(collector.url, "anon-9", OLD_SECRET), data=ONE_CLICK, timeout=5).status_code == 200
    (record,) = unsubscribed_events(read_clickstream(2))
    assert record.key == "user-9" and record.value["userId"] == "user-9"
    assert read_profile(store.hgetall(profile_key("user-9")))["unsubscribed"] is True


def test_forged_missing_malformed_and_expired_links_get_403_and_record_nothing(
    collector, store, read_clickstream
) -> None:
    good = link(collector.url, "victim")
    expired_at = int(time.time()) - 60
    signature_of_other = unsubscribe_links.signature(
        SECRET, "someone-else", int(dict(parse_qsl(urlsplit(good).query))["e"])
    )
    bad = {
        "forged": [
            with_query(good, s="0" * 64),
            with_query(good, s=signature_of_other),  # a real signature, for another lead
            with_query(good, l="someone-else"),  # re-aimed at another lead
            with_query(good, e=str(int(time.time()) + 10 * 365 * 86400)),  # made to live longer
            link(collector.url, "victim", "not-our-secret-0123456789abcdef0123456789"),
        ],
        "missing": [with_query(good, s=None), with_query(good, l=None), with_query(good, e=None), collector.url
                    + unsubscribe_links.PATH],
        "malformed": [with_query(good, s="zz"), with_query(good, e="soon"), with_query(good, e="1e12")],
        "expired": [link(collector.url, "victim", expiry=expired_at)],
    }  # fmt: skip
    before = {why: metric(collector.url, "nudge_unsubscribe_requests_total", result=why) for why in bad}
    for why, urls in bad.items():
        for url in urls:
            for answer in (
                requests.get(url, timeout=5),
                requests.post(url, data=ONE_CLICK, timeout=5),
                requests.post(url, timeout=5),
            ):
                assert answer.status_code == 403, (why, url, answer.status_code)
                assert "does not work" in answer.text and "<form" not in answer.text
                assert "victim" not in answer.text
        after = metric(collector.url, "nudge_unsubscribe_requests_total", result=why)
        assert after == before[why] + 3 * len(urls), why
    assert read_clickstream(1, timeout_s=1.5) == []
    assert not store.exists(profile_key("victim")) and not store.exists(profile_key("someone-else"))


def test_without_a_secret_every_link_is_refused(collector_settings: Settings, read_clickstream) -> None:
    server = ServerThread(lambda: create_app(collector_settings.with_(unsubscribe_secret=""))).start()
    try:
        url = link(server.url, "u1")
        assert requests.post(url, data=ONE_CLICK, timeout=5).status_code == 403
        assert requests.post(with_query(url, s=unsubscribe_links.signature("", "u1", 1)), timeout=5).status_code == 403
    finally:
        server.stop()
    assert read_clickstream(1, timeout_s=1) == []


def test_a_broker_that_does_not_answer_gets_503_and_the_retry_records_it(
    collector_settings: Settings, read_clickstream
) -> None:
    dead = collector_settings.with_(broker_url=f"kafka://127.0.0.1:{free_port()}")
    server = ServerThread(lambda: create_app(dead, produce_timeout_ms=500)).start()
    try:
        url = link(server.url, "u-retry")
        answer = requests.post(url, data=ONE_CLICK, timeout=10)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "30"
        assert "try again" in answer.text
    finally:
        server.stop()
    live = ServerThread(lambda: create_app(collector_settings)).start()
    try:  # the claim was released: the same link, retried, is recorded
        assert requests.post(with_query(url).replace(server.url, live.url), data=ONE_CLICK, timeout=10).ok
    finally:
        live.stop()
    assert [r.key for r in read_clickstream(1)] == ["u-retry"]


def test_secrets_settings_and_message_ids() -> None:
    base = Settings(broker_profile="kafka")
    rotating = base.with_(unsubscribe_secret=SECRET, unsubscribe_previous_secrets=(OLD_SECRET,))
    assert unsubscribe_secrets(rotating) == (SECRET, OLD_SECRET)
    assert unsubscribe_secrets(base) == ()  # allowed (a warning): every link is refused
    for short in ({"unsubscribe_secret": "short"}, {"unsubscribe_previous_secrets": (SECRET, "short")}):
        with pytest.raises(ConfigError, match="NUDGE_UNSUBSCRIBE_SECRET"):
            unsubscribe_secrets(base.with_(**short))
    assert unsubscribe_secrets(base.with_(broker_profile="dev", unsubscribe_secret="short")) == ("short",)
    env = {"NUDGE_UNSUBSCRIBE_SECRET": SECRET, "NUDGE_UNSUBSCRIBE_PREVIOUS_SECRETS": f"{OLD_SECRET},{SECRET}x"}
    from_env = Settings.from_env(env)
    assert (from_env.unsubscribe_secret, from_env.unsubscribe_previous_secrets) == (SECRET, (OLD_SECRET, SECRET + "x"))
    assert SECRET not in repr(from_env) and OLD_SECRET not in repr(from_env)
    minute = 1_795_000_020_000
    assert message_id("u1", "9", minute) == message_id("u1", "9", minute + 30_000)  # a double click
    assert message_id("u1", "9", minute) != message_id("u1", "9", minute + 60_000)  # a later unsubscribe
    assert message_id("u1", "9", minute) != message_id("u2", "9", minute)
