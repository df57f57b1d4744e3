"""The collector's regulation API and the edge's suppression (engine/collector/regulations.py), on a real collector,
broker and Redis: only the admin token is accepted (a write key is 401), requests are validated, a suppressed lead's
events are answered 200 but never produced, and `nudge privacy status --wait` names what is still pending."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import Iterator

import pytest
import requests

from engine.collector.app import create_app
from engine.config import Settings
from engine.kafka import topics
from engine.testing import TopicReader, nudge_command
from tests.collector.conftest import SERVER_KEY, ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "regulations-test-admin-token-0123456789"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{SERVER_KEY}:".encode()).decode()}
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def edge_settings(settings: Settings) -> Settings:
    return settings.with_(server_write_keys=(SERVER_KEY,), admin_token=TOKEN, rate_limit_ip_events_per_s=0.0)


@pytest.fixture
def collector(edge_settings: Settings) -> Iterator[ServerThread]:
    server = ServerThread(lambda: create_app(edge_settings)).start()
    try:
        yield server
    finally:
        server.stop()


def post(server: ServerThread, path: str, body: object, headers: dict[str, str]) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=headers, timeout=20)


def test_only_the_admin_token_may_ask(collector: ServerThread, settings: Settings) -> None:
    body = {"regulationType": "Suppress_With_Delete", "subjectType": "USER_ID", "subjectIds": ["u-1"]}
    for headers in ({}, BASIC, {"Authorization": f"Bearer {SERVER_KEY}"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = post(collector, "/v1/regulations", body, headers)
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    assert requests.get(f"{collector.url}/v1/regulations/req_x", headers=BASIC, timeout=10).status_code == 401
    for wrong in ({**body, "regulationType": "Forget"}, {**body, "subjectIds": []}, {**body, "subjectType": "EMAIL"}):
        assert post(collector, "/v1/regulations", wrong, ADMIN).status_code == 400
    assert requests.get(f"{collector.url}/v1/regulations/req_x", headers=ADMIN, timeout=10).status_code == 404


def test_no_admin_token_configured_refuses_everyone(settings: Settings) -> None:
    unset = settings.with_(server_write_keys=(SERVER_KEY,), admin_token="")
    server = ServerThread(lambda: create_app(unset)).start()
    try:
        body = {"regulationType": "Delete", "subjectIds": ["u-1"]}
        assert post(server, "/v1/regulations", body, {"Authorization": "Bearer "}).status_code == 401
    finally:
        server.stop()


async def test_a_suppressed_lead_is_dropped_at_the_edge(collector: ServerThread, edge_settings: Settings) -> None:
    body = {"regulationType": "Suppress", "subjectType": "USER_ID", "subjectIds": ["quiet-1"]}
    answer = await asyncio.to_thread(post, collector, "/v1/regulations", body, ADMIN)
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["data"]["regulateId"]
    status = await asyncio.to_thread(
        requests.get, f"{collector.url}/v1/regulations/{request_id}", headers=ADMIN, timeout=10
    )
    assert status.json()["data"]["type"] == "Suppress" and status.json()["data"]["done"] is False
    async with TopicReader.from_settings(edge_settings, topics.CLICKSTREAM, topics.PRIVACY_REQUESTS) as reader:
        for lead, message in (("quiet-1", "m-1"), ("loud-1", "m-2")):
            event = {"userId": lead, "event": "Product Added", "messageId": message}
            sent = await asyncio.to_thread(post, collector, "/v1/track", event, BASIC)
            assert sent.status_code == 200
        await reader.wait_for(lambda: reader.of(topics.CLICKSTREAM), 15, "the other lead's event")
        await reader.wait_for(lambda: reader.of(topics.PRIVACY_REQUESTS), 15, "the worker request")
        await asyncio.sleep(0.5)
        assert [r.key for r in reader.of(topics.CLICKSTREAM)] == [b"loud-1"]
        assert [r.json()["op"] for r in reader.of(topics.PRIVACY_REQUESTS)] == ["suppress"]
    # No worker runs here: the request waits for it, and `status --wait` says so.
    env = {**os.environ, **edge_settings.env()}
    waited = subprocess.run(
        [*nudge_command(), "privacy", "status", request_id, "--wait", "1"], env=env, capture_output=True, text=True
    )
    assert waited.returncode == 1 and "pending: worker (0/1 ids confirmed)" in waited.stderr, waited.stderr
