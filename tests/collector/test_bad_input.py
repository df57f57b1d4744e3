"""Refused requests get the documented 4xx with a JSON body the SDKs can log, and write nothing to Kafka."""

from __future__ import annotations

import base64
import gzip

import orjson
import pytest
import requests
from segment.analytics import Client as SegmentClient
from segment.analytics.request import APIError

from .conftest import WRITE_KEY

pytestmark = pytest.mark.integration

TS = "2026-11-25T12:00:00.000Z"


def auth(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(message_id: str, **extra: object) -> dict[str, object]:
    return {
        "type": "track",
        "event": "Viewed",
        "userId": "u1",
        "timestamp": TS,
        "messageId": message_id,
        **extra,
    }


def post(url: str, path: str, body: bytes | dict, headers: dict[str, str] | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(
        url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )


def assert_refused(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["code"] == code and payload["message"] and payload["success"] is False
    return payload


def test_bad_requests_are_refused_and_nothing_is_written(collector, read_clickstream) -> None:
    url = collector.url
    good = {"batch": [track("ok-1")]}
    # --- authentication -----------------------------------------------------------------------------------
    assert_refused(post(url, "/v1/batch", good), 401, "unauthorized")
    assert_refused(post(url, "/v1/batch", good, auth("wrong-key")), 401, "unauthorized")
    assert_refused(post(url, "/v1/batch", {**good, "writeKey": "wrong-key"}), 401, "unauthorized")
    assert_refused(post(url, "/v1/batch", good, {"Authorization": "Bearer x"}), 401, "unauthorized")
    assert_refused(post(url, "/v1/batch", good, {"Authorization": "Basic !!"}), 401, "unauthorized")
    # --- size limits --------------------------------------------------------------------------------------
    big_batch = {"batch": [track(f"b-{i}", properties={"pad": "x" * 20_000}) for i in range(30)]}
    payload = assert_refused(post(url, "/v1/batch", big_batch, auth()), 400, "too_large")
    assert "500 KB" in payload["message"]
    big_event = track("big", properties={"pad": "x" * 40_000})
    assert_refused(post(url, "/v1/track", big_event, auth()), 400, "too_large")
    payload = assert_refused(
        post(url, "/v1/batch", {"batch": [track("a"), big_event]}, auth()), 400, "invalid_events"
    )
    assert payload["errors"] == [
        {"index": 1, "reason": "too_large", "detail": payload["errors"][0]["detail"]}
    ]
    bomb = gzip.compress(orjson.dumps({"batch": [track("z", properties={"pad": "0" * 2_000_000})]}))
    assert len(bomb) < 10_000
    assert_refused(post(url, "/v1/batch", bomb, {**auth(), "Content-Encoding": "gzip"}), 400, "too_large")
    # --- encoding and JSON --------------------------------------------------------------------------------
    gz = {**auth(), "Content-Encoding": "gzip"}
    assert_refused(post(url, "/v1/batch", b"this is not gzip", gz), 400, "bad_gzip")
    assert_refused(post(url, "/v1/batch", gzip.compress(orjson.dumps(good))[:-12], gz), 400, "bad_gzip")
    assert_refused(post(url, "/v1/batch", b"{}", {**auth(), "Content-Encoding": "br"}), 400, "bad_encoding")
    assert_refused(post(url, "/v1/batch", b'{"batch": [', auth()), 400, "bad_json")
    assert_refused(post(url, "/v1/batch", b"[1, 2]", auth()), 400, "bad_json")
    assert_refused(post(url, "/v1/batch", {"events": []}, auth()), 400, "bad_batch")
    # --- per-event validation: one bad event refuses the whole batch --------------------------------------
    no_ids = {"type": "track", "event": "Viewed", "timestamp": TS, "messageId": "no-ids"}
    payload = assert_refused(
        post(url, "/v1/batch", {"batch": [track("fine"), no_ids, 7]}, auth()), 400, "invalid_events"
    )
    assert [(e["index"], e["reason"]) for e in payload["errors"]] == [
        (1, "missing_lead_id"),
        (2, "not_object"),
    ]
    assert "2 of 3 events" in payload["message"]
    assert_refused(post(url, "/v1/track", {**no_ids}, auth()), 400, "invalid_events")
    nameless = {"userId": "u1", "timestamp": TS}
    assert_refused(post(url, "/v1/track", nameless, auth()), 400, "invalid_events")
    bad_time = track("t", timestamp="yesterday")
    assert_refused(post(url, "/v1/batch", {"batch": [bad_time]}, auth()), 400, "invalid_events")
    # --- the SDK sees the refusal as a non-retryable error with our code ----------------------------------
    client = SegmentClient("wrong-key", host=url, sync_mode=True)
    with pytest.raises(APIError) as refused:
        client.track("u1", "Viewed")
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    # --- then one good request: it is the only record in the topic ----------------------------------------
    assert post(url, "/v1/batch", {**good, "writeKey": WRITE_KEY}).json() == {"success": True}
    records = read_clickstream(1, settle_s=0.5)
    assert [r.value["messageId"] for r in records] == ["ok-1"]


def test_single_event_endpoints_and_batch_context(collector, read_clickstream) -> None:
    url = collector.url
    assert (
        post(
            url,
            "/v1/identify",
            {"userId": "u2", "traits": {"email": "e@x.io"}, "timestamp": TS, "messageId": "i-1"},
            auth(),
        ).status_code
        == 200
    )
    # type comes from the endpoint; batch-level context and sentAt apply to each event
    body = {
        "batch": [
            {
                "type": "page",
                "anonymousId": "a2",
                "name": "Home",
                "messageId": "p-1",
                "originalTimestamp": "2026-11-25T11:59:00.000Z",
                "context": {"page": {"path": "/"}},
            }
        ],
        "context": {"ip": "10.0.0.1"},
        "sentAt": "2026-11-25T12:00:00.000Z",
    }
    assert post(url, "/v1/batch", body, auth("wk-other")).status_code == 200
    records = {r.value["messageId"]: r.value for r in read_clickstream(2)}
    assert records["i-1"]["type"] == "identify"
    page = records["p-1"]
    # the collector's trust mark overwrites whatever the client sent under context.nudge
    assert page["context"] == {"ip": "10.0.0.1", "page": {"path": "/"}, "nudge": {"trusted": False, "auth": "client"}}
    # originalTimestamp shifted by the device's clock skew (receivedAt - sentAt): one minute before arrival
    from engine.events import parse_ts

    skewed = parse_ts(page["receivedAt"]) - parse_ts(page["timestamp"])
    assert skewed == 60_000


def test_same_batch_twice_and_repeated_ids_are_produced_once(collector, read_clickstream) -> None:
    batch = {"batch": [track("d-1"), track("d-2"), track("d-1")]}
    assert post(collector.url, "/v1/batch", batch, auth()).json() == {"success": True}
    assert post(collector.url, "/v1/batch", batch, auth()).json() == {"success": True}
    records = read_clickstream(2, settle_s=0.5)
    assert sorted(r.value["messageId"] for r in records) == ["d-1", "d-2"]


def test_healthz_and_metrics(collector) -> None:
    health = requests.get(collector.url + "/healthz")
    assert health.status_code == 200 and health.json() == {"broker": "ok", "redis": "ok"}
    post(collector.url, "/v1/track", track("m-1"), auth())
    post(collector.url, "/v1/track", track("m-2"), auth("nope"))
    text = requests.get(collector.url + "/metrics").text
    assert 'nudge_collector_requests_total{endpoint="track",status="200"}' in text
    assert 'nudge_collector_requests_total{endpoint="track",status="401"}' in text
    assert 'nudge_collector_events_total{outcome="accepted",type="track"}' in text


def test_browser_requests_as_analytics_js_sends_them(collector, read_clickstream) -> None:
    """analytics.js: one-letter paths, text/plain JSON bodies carrying `writeKey`, cross-origin (CORS)."""
    url, origin = collector.url, {"Origin": "https://shop.example", "Content-Type": "text/plain"}
    preflight = requests.options(url + "/v1/t", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    event = {
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": "browser-1",
        "writeKey": WRITE_KEY,
        "messageId": "ajs-1",
        "timestamp": TS,
        "sentAt": TS,
    }
    accepted = requests.post(url + "/v1/t", data=orjson.dumps(event), headers=origin)
    assert accepted.status_code == 200 and accepted.headers["Access-Control-Allow-Origin"] == "*"
    batch = {
        "writeKey": WRITE_KEY,
        "sentAt": TS,
        "batch": [{**event, "type": "page", "name": "Home", "messageId": "ajs-2"}],
    }
    assert requests.post(url + "/v1/b", data=orjson.dumps(batch), headers=origin).status_code == 200
    refused = requests.post(url + "/v1/p", data=orjson.dumps({**event, "writeKey": "nope"}), headers=origin)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    records = {r.value["messageId"]: r.value for r in read_clickstream(2)}
    assert records["ajs-1"]["type"] == "track" and records["ajs-2"]["type"] == "page"
    assert "writeKey" not in records["ajs-1"]  # the key never reaches Kafka
    text = requests.get(url + "/metrics").text
    assert 'nudge_collector_requests_total{endpoint="track",status="200"}' in text
