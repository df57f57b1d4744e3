"""The real collector on loopback (real broker and Redis) against wrong clocks, bad timestamps, deep nesting, half-bad
batches, slow bodies, bugs and a bounded fuzz: every answer is the documented 4xx, never a 5xx, and nothing of a
refused request reaches `clickstream`."""

from __future__ import annotations

import gzip
import itertools
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson
import pytest
import redis
import requests
from aiohttp import web

from engine.collector.app import COLLECTOR_KEY, create_app
from engine.collector.identity import profile_key, read_profile
from engine.collector.limits import RateLimiter
from engine.collector.trust import UserHashes
from engine.config import Settings
from engine.events import MAX_NESTING, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, format_ts, parse_event, parse_ts

from .conftest import SERVER_KEY, USER_HASH_SECRET, WRITE_KEY, ServerThread
from .test_bad_input import assert_refused, auth, post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
# JSON cannot carry NaN or the infinities: those forms are covered by tests/test_events.py and by `bad_json` below.
BAD_TIMESTAMPS: list[Any] = [
    1e308,
    -1,
    0,
    12345,
    1_795_000_000,  # epoch seconds
    -(2**63),
    2**64 - 1,
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "1969-12-31T23:59:59Z",
    "2100-01-01T00:00:00Z",
    "yesterday",
    "-1",
    "1e308",
    "2026-02-30T00:00:00Z",
    "x" * 20_000,
    True,
    [],
    {"at": 1},
]


def now_ms() -> int:
    return int(time.time() * 1000)


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "userId": "u1", "messageId": message_id, **extra}


def nested_body(depth: int, field: str = "properties") -> bytes:
    """A /v1/track body whose `field` nests `depth` levels (orjson will not write more than 254: built as text)."""
    opening = "".join('{"k":' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    head = orjson.dumps(track(f"deep-{field}-{depth}")).decode()[:-1]
    return f'{head},"{field}":{opening}1{closing}}}'.encode()


def test_every_bad_timestamp_form_is_refused_with_400(collector, read_clickstream) -> None:
    url = collector.url
    for field in TIME_FIELDS:
        for n, value in enumerate(BAD_TIMESTAMPS):
            event = {**track(f"ts-{field}-{n}", timestamp=format_ts(now_ms())), field: value}
            response = post(url, "/v1/track", event, auth())
            payload = assert_refused(response, 400, "invalid_events")
            assert [e["reason"] for e in payload["errors"]] == ["bad_timestamp"], (field, value)
            assert len(response.content) < 2_000  # a bad value is quoted in part only
    # a batch's own sentAt applies to its events: each one is refused
    batch = {"batch": [track("b-1"), track("b-2")], "sentAt": 12345}
    payload = assert_refused(post(url, "/v1/batch", batch, auth()), 400, "invalid_events")
    assert [(e["index"], e["reason"]) for e in payload["errors"]] == [(0, "bad_timestamp"), (1, "bad_timestamp")]
    # the device's time minus a far-off sentAt leaves the range
    skewed = track("skew-out", timestamp="2000-01-01T00:00:01Z", sentAt="2099-12-31T00:00:00Z")
    assert_refused(post(url, "/v1/track", skewed, auth()), 400, "invalid_events")
    for text in (b'{"timestamp": NaN}', b'{"timestamp": Infinity}', b'{"timestamp": -Infinity}'):
        assert_refused(post(url, "/v1/track", text, auth()), 400, "bad_json")
    # then one good request: it is the only record
    assert post(url, "/v1/track", track("ok"), auth()).status_code == 200
    assert [r.value["messageId"] for r in read_clickstream(1, settle_s=0.5)] == ["ok"]


def test_nesting_past_the_limit_is_refused_as_too_deep(collector, read_clickstream) -> None:
    url = collector.url
    for field in ("properties", "traits", "context"):
        for depth in (MAX_NESTING + 1, 254, 255, 1000):
            payload = assert_refused(post(url, "/v1/track", nested_body(depth, field), auth()), 400, "invalid_events")
            assert [e["reason"] for e in payload["errors"]] == ["too_deep"], (field, depth)
    # past what the JSON decoder itself accepts: not JSON to us
    assert_refused(post(url, "/v1/track", nested_body(1100), auth()), 400, "bad_json")
    assert post(url, "/v1/track", nested_body(MAX_NESTING), auth()).status_code == 200
    (record,) = read_clickstream(1, settle_s=0.5)
    assert record.value["messageId"] == f"deep-properties-{MAX_NESTING}"


def test_a_batch_with_one_bad_event_writes_nothing(collector, read_clickstream) -> None:
    url = collector.url
    bad_events = [
        track("bad-ts", timestamp=1e308),
        track("bad-type", type="click"),
        {"type": "track", "event": "Viewed", "messageId": "no-lead"},
        "not an object",
    ]
    for n, bad in enumerate(bad_events):
        batch = {"batch": [track(f"good-{n}-a"), bad, track(f"good-{n}-b")]}
        payload = assert_refused(post(url, "/v1/batch", batch, auth()), 400, "invalid_events")
        assert [e["index"] for e in payload["errors"]] == [1]
    deep = orjson.loads(nested_body(MAX_NESTING + 1))
    assert_refused(post(url, "/v1/batch", {"batch": [track("good-deep"), deep]}, auth()), 400, "invalid_events")
    assert post(url, "/v1/batch", {"batch": [track("sentinel")]}, auth()).status_code == 200
    assert [r.value["messageId"] for r in read_clickstream(1, settle_s=0.5)] == ["sentinel"]


def test_a_device_clock_90s_fast_is_corrected_with_sent_at_and_clamped_without(
    collector, read_clickstream
) -> None:
    fast_ms = 90_000
    happened = now_ms() - 1_000  # by a true clock
    device = {"anonymousId": "fast-phone", "timestamp": format_ts(happened + fast_ms)}
    batch = {
        "batch": [{**device, "type": "track", "event": "Product Added", "messageId": "fast-1"}],
        "sentAt": format_ts(now_ms() + fast_ms),  # the device's clock as it sends
    }
    assert post(collector.url, "/v1/batch", batch, auth()).status_code == 200
    # the same device through a client that sends no sentAt: nothing can correct it, the receive time bounds it
    without = {**device, "type": "track", "event": "Product Viewed", "messageId": "fast-2"}
    assert post(collector.url, "/v1/track", without, auth()).status_code == 200
    records = {r.value["messageId"]: r.value for r in read_clickstream(2)}

    corrected = records["fast-1"]
    received = parse_ts(corrected["receivedAt"])
    assert corrected["originalTimestamp"] == device["timestamp"]
    assert parse_ts(corrected["sentAt"]) - received >= fast_ms - 1_000
    assert abs(parse_ts(corrected["timestamp"]) - happened) < 1_000  # the device's 90 s are gone
    # what the worker reads: the corrected time as event time, and the receive time for its clock bounds
    event = parse_event(orjson.dumps(corrected))
    assert (event.timestamp_ms, event.received_at_ms) == (parse_ts(corrected["timestamp"]), received)
    assert event.original_timestamp_ms == happened + fast_ms

    clamped = records["fast-2"]
    assert parse_ts(clamped["timestamp"]) == parse_ts(clamped["receivedAt"]) + 5_000
    assert clamped["originalTimestamp"] == device["timestamp"] and "sentAt" not in clamped


def test_control_characters_are_stripped_from_traits_before_they_are_stored(
    collector, collector_settings, read_clickstream
) -> None:
    identify = {
        "userId": "crlf-lead",
        "messageId": "crlf-1",
        "traits": {"name": "Eve\r\nBcc: everyone@example.com", "email": "eve@example.com\x00", "note": "a\tb"},
    }
    assert post(collector.url, "/v1/identify", identify, auth(SERVER_KEY)).status_code == 200  # trusted: kept
    (record,) = read_clickstream(1)
    cleaned = {"name": "EveBcc: everyone@example.com", "email": "eve@example.com", "note": "a\tb"}
    assert record.value["traits"] == cleaned
    store = redis.Redis.from_url(collector_settings.redis_url)  # the profile was written before the 200
    try:
        profile = read_profile(store.hgetall(profile_key("crlf-lead")))
    finally:
        store.close()
    assert {name: profile[name] for name in cleaned} == cleaned


# --- slow bodies ---------------------------------------------------------------------------------------------------

BODY_TIMEOUT_S = 1.0


@pytest.fixture
def strict_collector(collector_settings: Settings) -> Iterator[ServerThread]:
    """A collector with a 1 s body timeout and a single processing slot: a slow client that held the slot would
    turn every other request into 503 `overloaded`."""
    settings = collector_settings.with_(collector_body_timeout_s=BODY_TIMEOUT_S)
    server = ServerThread(lambda: create_app(settings, max_inflight=1)).start()
    server.settings = settings  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Drip:
    """What a client dripping its body one byte at a time saw: when the answer came, what it was, and whether the
    server closed the connection after it."""

    answered_after_s: float | None = None
    closed_after_s: float | None = None
    answer: bytes = b""


def drip_body(url: str, every_s: float, give_up_s: float) -> Drip:
    parsed = urlparse(url)
    seen = Drip()
    with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as sock:
        ((auth_name, auth_value),) = auth().items()
        head = (
            "POST /v1/track HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
            f"{auth_name}: {auth_value}\r\nContent-Length: 10000\r\n\r\n"
        )
        started = time.monotonic()
        sock.sendall(head.encode() + b"{")
        sock.settimeout(every_s)
        while time.monotonic() - started < give_up_s:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                try:
                    sock.sendall(b" ")
                except OSError:
                    seen.closed_after_s = time.monotonic() - started
                    break
                continue
            except OSError:
                seen.closed_after_s = time.monotonic() - started
                break
            if not chunk:
                seen.closed_after_s = time.monotonic() - started
                break
            if seen.answered_after_s is None:
                seen.answered_after_s = time.monotonic() - started
            seen.answer += chunk
    return seen


def test_a_dripping_client_gets_408_within_the_bound_and_blocks_nobody(strict_collector, read_clickstream) -> None:
    url = strict_collector.url
    drips: list[Drip] = []
    dripper = threading.Thread(target=lambda: drips.append(drip_body(url, every_s=0.1, give_up_s=10)))
    dripper.start()
    time.sleep(0.1)  # its headers are in: the collector is waiting for its body
    served = []
    with requests.Session() as session:
        deadline = time.monotonic() + BODY_TIMEOUT_S * 0.8
        n = 0
        while time.monotonic() < deadline:  # while the body drips: the one processing slot stays free
            started = time.monotonic()
            response = session.post(
                url + "/v1/track", data=orjson.dumps(track(f"during-{n}")), headers=auth(), timeout=5
            )
            served.append((response.status_code, time.monotonic() - started))
            n += 1
    dripper.join(15)
    assert served and all(status == 200 for status, _ in served), served
    assert max(took for _, took in served) < BODY_TIMEOUT_S
    (drip,) = drips
    assert drip.answered_after_s is not None and BODY_TIMEOUT_S <= drip.answered_after_s < BODY_TIMEOUT_S + 1.0
    assert drip.answer.startswith(b"HTTP/1.1 408"), drip.answer[:200]
    head, _, body = drip.answer.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and orjson.loads(body)["code"] == "body_timeout"
    assert drip.closed_after_s is not None and drip.closed_after_s < BODY_TIMEOUT_S + 1.5  # not lingering
    metrics = requests.get(url + "/metrics").text
    assert 'nudge_collector_requests_total{endpoint="track",status="408"}' in metrics
    assert len(read_clickstream(len(served), settle_s=0.3)) == len(served)


def server_errors_counted(metrics_text: str) -> float:
    """The collector's requests answered 5xx so far (the metrics registry is shared by every test)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("nudge_collector_requests_total{") and 'status="5' in line
    )


def test_a_client_that_goes_away_mid_body_is_not_a_server_error(collector) -> None:
    errors_before = server_errors_counted(requests.get(collector.url + "/metrics").text)
    parsed = urlparse(collector.url)
    ((auth_name, auth_value),) = auth().items()
    for _ in range(3):
        with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as sock:
            sock.sendall(
                f"POST /v1/batch HTTP/1.1\r\nHost: c\r\n{auth_name}: {auth_value}\r\nContent-Length: 5000\r\n\r\n"
                '{"batch": ['.encode()
            )
            time.sleep(0.1)
    assert post(collector.url, "/v1/track", track("after"), auth()).status_code == 200
    metrics = requests.get(collector.url + "/metrics").text
    assert server_errors_counted(metrics) == errors_before
    assert 'nudge_collector_requests_total{endpoint="batch",status="400"}' in metrics


# --- bugs ----------------------------------------------------------------------------------------------------------


def test_an_unexpected_error_is_a_counted_500_and_writes_nothing(collector_settings, read_clickstream) -> None:
    def broken() -> Any:
        app = create_app(collector_settings)

        async def rekey(events: list) -> list:
            raise RuntimeError("a bug")

        app[COLLECTOR_KEY].identity.rekey = rekey  # type: ignore[method-assign]
        return app

    server = ServerThread(broken).start()
    try:
        response = post(server.url, "/v1/batch", {"batch": [track("bug-1"), track("bug-2")]}, auth())
        assert response.status_code == 500
        assert response.json() == {
            "success": False,
            "code": "internal_error",
            "message": response.json()["message"],
        }
        metrics = requests.get(server.url + "/metrics").text
        assert 'nudge_collector_requests_total{endpoint="batch",status="500"}' in metrics
    finally:
        server.stop()
    assert read_clickstream(1, timeout_s=1.0, settle_s=0) == []


# --- fuzz ----------------------------------------------------------------------------------------------------------


def good_timestamp(rng: random.Random) -> Any:
    at = now_ms() + rng.randint(-10**9, 120_000)  # past or, for a fast device clock, up to 2 minutes ahead
    return rng.choice([format_ts(at), at, format_ts(at)[:-1] + "+00:00", None])


def random_timestamp(rng: random.Random) -> Any:
    return rng.choice([good_timestamp(rng), good_timestamp(rng), *BAD_TIMESTAMPS, rng.uniform(-1e20, 1e20), ""])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        strings = ["text", "é\u2028\r\n\x00\x85", "\ud7ff", "x" * rng.randint(0, 500)]
        return rng.choice([None, True, 3, -(2**63), 2**64 - 1, 1.5e300, *strings])
    if roll < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {f"k{i}\r" if i == 2 else f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def random_user_hash(rng: random.Random, event: dict[str, Any]) -> Any:
    user = event.get("userId")
    return rng.choice([
        UserHashes.sign(USER_HASH_SECRET, user) if isinstance(user, str) else "0" * 64,
        "0" * 64, "zz" * 32, "", 7, None, {"h": 1}, ["x"], "é" * 64, UserHashes.sign(USER_HASH_SECRET, "other"),
    ])


def valid_event(rng: random.Random, n: int) -> dict[str, Any]:
    kind = rng.choice(["track", "track", "identify", "identify", "page", "alias", "alias", "group", "screen"])
    event: dict[str, Any] = {
        "type": kind,
        rng.choice(["userId", "anonymousId"]): f"lead-{rng.randint(0, 20)}",
        "properties": random_object(rng),
        "traits": random_object(rng),
        "context": random_object(rng),
    }
    if kind in ("identify", "alias") and rng.random() < 0.7:  # merges: of known users, of anonymous ids, of itself
        event["userId"] = f"lead-{rng.randint(0, 20)}"
        other = rng.choice([f"lead-{rng.randint(0, 20)}", f"anon-{rng.randint(0, 20)}"])
        event["previousId" if kind == "alias" else "anonymousId"] = other
    if rng.random() < 0.3:
        event["traits"]["email"] = rng.choice(["a@example.com", "", None, 3, {"x": 1}, ["a@b.c"]])
    if rng.random() < 0.3:
        event["context"]["userHash"] = random_user_hash(rng, event)
    if rng.random() < 0.1:
        event["context"]["nudge"] = rng.choice([{"trusted": True, "auth": "server"}, "yes", None, [], {"auth": 3}])
    if kind == "track":
        event["event"] = rng.choice(["Viewed", "Product Added", "Order Completed"])
    if rng.random() < 0.9:
        event["messageId"] = f"fuzz-{n}-{rng.randint(0, 10**9)}"
    else:
        event["properties"] = {"unique": n}  # a synthetic id, distinct per event
    for field in ("timestamp", "originalTimestamp", "sentAt"):
        if rng.random() < 0.5:
            event[field] = good_timestamp(rng)
    return event


def hostile_event(rng: random.Random, n: int) -> Any:
    """A valid event with one thing or more broken, now and then not even an object."""
    if rng.random() < 0.05:
        return rng.choice(["text", 7, None, [], [track("x")]])
    event = valid_event(rng, n)
    breakages = [
        lambda: event.update(type=rng.choice(["nope", 3, None, ["track"]])),
        lambda: event.update(event=rng.choice(["", None, 5])) if event["type"] == "track" else None,
        lambda: (event.pop("userId", None), event.pop("anonymousId", None), event.update(userId=rng.choice(["", {}]))),
        lambda: event.update({rng.choice(["properties", "traits", "context"]): random_value(rng)}),
        lambda: event.update({rng.choice(TIME_FIELDS): random_timestamp(rng)}),
        lambda: event.update(properties=orjson.loads(nested_body(rng.randint(MAX_NESTING - 2, 200)))["properties"]),
        lambda: event.update(properties={"pad": "x" * rng.randint(30_000, 40_000)}),
        lambda: event.update(messageId=rng.choice([{}, [], "m" * 300])),
        lambda: event.update({rng.choice(["userId", "anonymousId", "previousId"]): rng.choice([".", "..", " ", "\t"])}),
        lambda: event.update(traits={f"t{i}": i for i in range(rng.choice([101, 150]))}),
    ]
    for _ in range(rng.randint(1, 2)):
        rng.choice(breakages)()
    return event


SETTINGS_KEYS = [WRITE_KEY, SERVER_KEY, "nope", "..", "%2e%2e", "k" * 5000, "é", "a/b", "", " "]


def random_request(rng: random.Random, n: int) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) of one request, valid or broken in one way or more."""
    hostile = rng.random() < 0.6
    roll = rng.random()
    if roll < 0.05:  # analytics.js's settings document, for any key
        return "GET", f"/v1/projects/{rng.choice(SETTINGS_KEYS)}/settings", b"", spoofed(rng, {})
    if roll < 0.08:
        return "OPTIONS", rng.choice(["/v1/m", "/v1/t", "/v1/projects/x/settings", "/v1/a/b"]), b"", {}
    endpoint = rng.choice(
        ["/v1/batch", "/v1/batch", "/v1/track", "/v1/identify", "/v1/alias", "/v1/t", "/v1/b", "/v1/i", "/v1/a"]
    )
    if roll < 0.14:  # analytics.js's telemetry: anything goes, nothing is stored
        body = rng.choice([b'{"series": []}', b"", b"\xff", b"[" * 3000, orjson.dumps(random_object(rng))])
        return "POST", "/v1/m", body, spoofed(rng, {"Content-Type": "text/plain"})
    if hostile and rng.random() < 0.05:
        endpoint = rng.choice(["/v1/nope", "/v2/batch", "/", "/v1/projects/x/settings"])

    def event(i: int) -> Any:
        return hostile_event(rng, n * 100 + i) if hostile and rng.random() < 0.4 else valid_event(rng, n * 100 + i)

    if endpoint in ("/v1/batch", "/v1/b"):
        doc: Any = {"batch": [event(i) for i in range(rng.randint(0, 12))]}
        if rng.random() < 0.3:
            doc["sentAt"] = random_timestamp(rng) if hostile else good_timestamp(rng)
        if rng.random() < 0.2:
            doc["context"] = random_value(rng) if hostile else random_object(rng)
        if hostile and rng.random() < 0.05:
            doc["batch"] = rng.choice([{}, "x", None])
    else:
        doc = event(0)
    headers = {"Content-Type": rng.choice(["application/json", "text/plain"])}
    auth_roll = rng.random() * (1.0 if hostile else 0.8)
    if auth_roll < 0.7:
        headers.update(auth(rng.choice([WRITE_KEY, WRITE_KEY, SERVER_KEY, "wk-other"])))
    elif auth_roll < 0.8 and isinstance(doc, dict):
        doc["writeKey"] = rng.choice([WRITE_KEY, SERVER_KEY, "wrong", 3, None])
    elif auth_roll < 0.9:
        near_miss = auth(SERVER_KEY + "x")["Authorization"]
        headers["Authorization"] = rng.choice(
            ["Basic !!", "Bearer x", "Basic", "Basic " + "QQ==" * 50, "Basic \xe9", near_miss]
        )
    spoofed(rng, headers)
    try:
        body = orjson.dumps(doc)
    except TypeError:  # nested past orjson's writer: send what we can
        body = b"{}"
    shape = rng.random() if hostile else rng.random() * 0.1  # a clean request is plain or gzipped
    if shape < 0.1:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    elif shape < 0.13:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)[: rng.randint(0, 30)]
    elif shape < 0.15:
        headers["Content-Encoding"] = rng.choice(["br", "deflate", "gzip, gzip", "identity, gzip"])
    elif shape < 0.18:
        body = b"\xff\xfe" + body  # not UTF-8
    elif shape < 0.21:
        body = body[: rng.randint(0, len(body))]  # cut off
    elif shape < 0.23:
        body = nested_body(rng.choice([MAX_NESTING + 1, 600, 1100]))
    elif shape < 0.24:
        body = rng.randbytes(rng.randint(0, 2_000))
    return "POST", endpoint, body, headers


def spoofed(rng: random.Random, headers: dict[str, str]) -> dict[str, str]:
    """Now and then an X-Forwarded-For the client wrote itself (the collector is told there is one proxy)."""
    if rng.random() < 0.3:
        headers["X-Forwarded-For"] = rng.choice(
            ["1.2.3.4", "::1", "2001:db8::1, 10.0.0.1", "not an address", ", ,", "1.2.3.4, " * 50, "::ffff:1.2.3.4"]
        )
    return headers


@pytest.fixture
def limited_collector(collector_settings: Settings) -> Iterator[ServerThread]:
    """Rate limits on, behind one proxy, with a rate-limit clock that moves 10 ms per request whatever the machine's
    speed (so the same requests are refused on every run): loose enough for most of the fuzz to pass, tight enough
    to refuse some."""
    settings = collector_settings.with_(
        rate_limit_ip_events_per_s=50.0, rate_limit_ip_burst=100, rate_limit_key_events_per_s=1000.0,
        rate_limit_key_burst=400, collector_forwarded_hops=1, collector_max_batch_events=10,
    )
    ticks = itertools.count()

    def app() -> web.Application:
        built = create_app(settings)
        built[COLLECTOR_KEY].limiter = RateLimiter(
            settings.rate_limit_key_events_per_s, settings.rate_limit_key_burst,
            settings.rate_limit_ip_events_per_s, settings.rate_limit_ip_burst,
            clock=lambda: next(ticks) * 0.005,  # called about twice per request
        )
        return built

    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


def test_fuzzed_requests_never_get_a_5xx_and_only_valid_events_are_written(
    limited_collector: ServerThread, read_clickstream
) -> None:
    url = limited_collector.url
    rng = random.Random(15)
    errors_before = server_errors_counted(requests.get(url + "/metrics").text)
    statuses: dict[int, int] = {}
    accepted: set[str] = set()
    with requests.Session() as session:
        for n in range(400):
            method, path, body, headers = random_request(rng, n)
            response = session.request(method, url + path, data=body, headers=headers, timeout=10)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (method, path, headers, body[:300], response.text[:300])
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
            if response.status_code == 200 and method == "POST":
                doc = orjson.loads(gzip.decompress(body) if headers.get("Content-Encoding") == "gzip" else body)
                events = doc.get("batch", [doc])
                accepted.update(e.get("messageId") or f"synthetic-{i}-{n}" for i, e in enumerate(events))
    # every side was exercised: accepted, refused, the new endpoints (200 settings, 204 telemetry and preflights)
    assert statuses.get(200, 0) > 60 and statuses.get(400, 0) > 50 and statuses.get(204, 0) > 20, statuses
    assert statuses.get(401, 0) > 10 and statuses.get(404, 0) > 5 and statuses.get(429, 0) > 10, statuses
    records = read_clickstream(len(accepted), settle_s=0.3)
    assert len(records) == len(accepted)
    for record in records:  # everything written is a valid event, in range, bounded by its receive time, marked
        event = parse_event(orjson.dumps(record.value))
        assert MIN_TIMESTAMP_MS <= event.timestamp_ms < MAX_TIMESTAMP_MS
        assert event.received_at_ms is not None and event.timestamp_ms <= event.received_at_ms + 5_000
        assert record.key == event.lead_id
        mark = record.value["context"]["nudge"]
        assert mark["auth"] in ("server", "user_hash", "client") and event.trusted == (mark["auth"] != "client")
        assert "userHash" not in record.value["context"]
        if not event.trusted:  # a visitor's email never reaches the fields connectors read
            assert "email" not in event.traits and "email" not in (event.context.get("traits") or {})
    assert server_errors_counted(requests.get(url + "/metrics").text) == errors_before
