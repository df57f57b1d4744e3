"""The unmodified Segment and RudderStack Python SDKs, pointed at a real collector, reach the clickstream. They are
server SDKs: they send with a server write key (`NUDGE_SERVER_WRITE_KEYS`), so their events are trusted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import redis
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from engine.collector.identity import read_profile
from engine.events import parse_event, parse_ts

from .conftest import SERVER_KEY

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)
WHEN_MS = int(WHEN.timestamp() * 1000)


def segment(url: str, **options: object) -> SegmentClient:
    errors: list[Exception] = []
    client = SegmentClient(SERVER_KEY, host=url, on_error=lambda e, _batch: errors.append(e), **options)
    client.errors = errors  # type: ignore[attr-defined]
    return client


def test_segment_sync_calls_arrive_with_their_fields(collector, read_clickstream) -> None:
    client = segment(collector.url, sync_mode=True)
    client.track("u1", "Product Added", {"sku": "A-1", "price": 19.5}, timestamp=WHEN, message_id="m-track")
    client.page("u1", "Shop", "Checkout", {"path": "/checkout"}, timestamp=WHEN, message_id="m-page")
    client.identify(
        "u1",
        {"email": "ann@example.com", "timezone": "Europe/Paris"},
        timestamp=WHEN,
        message_id="m-identify",
    )
    client.screen("u1", None, "Home", timestamp=WHEN, message_id="m-screen")
    client.group("u1", "acme", {"name": "Acme"}, timestamp=WHEN, message_id="m-group")
    records = {r.value["messageId"]: r for r in read_clickstream(5)}
    assert set(records) == {"m-track", "m-page", "m-identify", "m-screen", "m-group"}
    assert all(r.key == "u1" for r in records.values())
    track = records["m-track"].value
    assert track["type"] == "track" and track["event"] == "Product Added" and track["userId"] == "u1"
    assert track["properties"] == {"sku": "A-1", "price": 19.5}
    # the SDK's timestamp is the device's time, corrected by receivedAt - sentAt (here: milliseconds of latency)
    assert track["originalTimestamp"] == "2026-11-25T12:00:00.123Z"
    assert 0 <= parse_ts(track["timestamp"]) - WHEN_MS < 2_000
    assert parse_ts(track["timestamp"]) - WHEN_MS == parse_ts(track["receivedAt"]) - parse_ts(track["sentAt"])
    assert track["context"]["library"]["name"] == "analytics-python"
    assert track["context"]["nudge"] == {"trusted": True, "auth": "server"}
    assert records["m-page"].value["name"] == "Checkout"
    assert records["m-identify"].value["traits"]["email"] == "ann@example.com"
    assert records["m-screen"].value["type"] == "screen"
    # what the worker reads back is an equal, valid Event
    event = parse_event(records["m-track"].value)
    assert (event.lead_id, event.name, event.original_timestamp_ms) == ("u1", "Product Added", WHEN_MS)
    assert event.trusted
    assert event.timestamp_ms == parse_ts(track["timestamp"])
    assert not client.errors


def test_segment_batched_and_gzipped_flush(collector, read_clickstream) -> None:
    client = segment(collector.url, gzip=True, upload_size=20, upload_interval=0.05)
    for i in range(50):
        client.track(anonymous_id=f"anon-{i % 5}", event="Viewed", properties={"i": i}, timestamp=WHEN)
    client.flush()
    client.join()
    records = read_clickstream(50)
    assert len(records) == 50
    assert sorted(r.value["properties"]["i"] for r in records) == list(range(50))
    assert {r.key for r in records} == {f"anon-{i}" for i in range(5)}
    # one lead → one partition, so its events stay in order for the worker
    assert all(len({r.partition for r in records if r.key == lead}) == 1 for lead in {r.key for r in records})
    assert not client.errors


def test_rudderstack_sdk_track_page_identify(collector, read_clickstream) -> None:
    errors: list[Exception] = []
    client = RudderClient(
        SERVER_KEY, host=collector.url, on_error=lambda e, _b: errors.append(e), upload_interval=0.05
    )  # gzip is the RudderStack default
    client.track("r1", "Checkout Started", {"total": 42}, timestamp=WHEN)
    client.page("r1", "Shop", "Cart", timestamp=WHEN)
    client.identify("r1", {"email": "rudi@example.com"}, timestamp=WHEN)
    client.flush()
    client.join()
    records = read_clickstream(3)
    by_type = {r.value["type"]: r.value for r in records}
    assert set(by_type) == {"track", "page", "identify"} and len(records) == 3
    assert by_type["track"]["event"] == "Checkout Started" and by_type["track"]["properties"] == {"total": 42}
    assert by_type["page"]["name"] == "Cart"
    assert by_type["identify"]["traits"]["email"] == "rudi@example.com"
    assert all(r.key == "r1" for r in records)
    assert not errors


def test_sdk_retry_after_a_lost_response_does_not_duplicate(collector, read_clickstream) -> None:
    """The collector produced the batch but the SDK saw a failure (the response was lost): it retries, and the
    retry is answered 200 without producing again."""
    from .proxies import FlakyProxy

    proxy = FlakyProxy(collector.url, fail_first=1).start()
    try:
        client = segment(proxy.url, upload_interval=0.05)
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for message_id in ids:
            client.track("u-retry", "Product Added", timestamp=WHEN, message_id=message_id)
        client.flush()
        client.join()
        assert proxy.app_state["forwarded"] >= 2  # the SDK really retried
    finally:
        proxy.stop()
    records = read_clickstream(3, settle_s=0.5)
    assert sorted(r.value["messageId"] for r in records) == sorted(ids)
    assert not client.errors


def test_identify_stores_traits_and_merges_anonymous_lead(collector, collector_settings, read_clickstream):
    client = segment(collector.url, sync_mode=True)
    client.track(anonymous_id="anon-9", event="Product Added", properties={"sku": "S"}, timestamp=WHEN)
    client.identify(
        "user-9",
        {"email": "zoe@example.com", "name": "Zoe", "company": {"name": "Z"}, "consent": True},
        anonymous_id="anon-9",
        timestamp=WHEN,
    )
    client.track(anonymous_id="anon-9", event="Checkout Started", timestamp=WHEN)  # after the merge
    client.alias("user-9-crm", "user-9", timestamp=WHEN)
    records = read_clickstream(4)
    by_event = {r.value.get("event") or r.value["type"]: r for r in records}
    assert by_event["Product Added"].key == "anon-9"  # before the identify: its own lead
    identify = by_event["identify"]
    assert identify.key == "user-9"
    assert (identify.value["userId"], identify.value["anonymousId"]) == ("user-9", "anon-9")
    later = by_event["Checkout Started"]
    assert later.key == "user-9" and later.value["userId"] == "user-9"
    assert later.value["anonymousId"] == "anon-9"  # kept, so the worker can tell where it came from
    alias = by_event["alias"]
    assert (alias.key, alias.value["previousId"], alias.value["userId"]) == ("user-9", "user-9-crm", "user-9")
    store = redis.Redis.from_url(collector_settings.redis_url)
    try:
        profile = read_profile(store.hgetall("nudge:profile:user-9"))
        assert profile["email"] == "zoe@example.com" and profile["name"] == "Zoe"
        assert profile["company"] == {"name": "Z"} and profile["consent"] is True
        assert profile["_updated_at_ms"] == parse_ts(identify.value["timestamp"])  # the corrected event time
        assert store.get("nudge:alias:anon-9") == b"user-9"
        assert store.get("nudge:alias:user-9-crm") == b"user-9"
    finally:
        store.close()
