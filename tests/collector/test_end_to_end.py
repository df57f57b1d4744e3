"""Acceptance, through the real collector (driven by the Segment SDK and raw browser requests) and a real `nudge
worker` subprocess: anonymous cart → server identify → the abandonment nudge goes to the identified email; a
visitor's identify with the public browser key cannot redirect another lead's nudge; a `trusted: true` matcher
ignores what a browser key sends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from segment.analytics import Client as SegmentClient

from connectors.context import LeadView
from engine.collector.app import create_app
from engine.collector.trust import UserHashes
from engine.config import Settings
from engine.core.model import Action
from engine.testing import TopicReader
from tests.integration.worker_process import WorkerProcess, cart_abandoned, with_rules

from .conftest import SERVER_KEY, USER_HASH_SECRET, WRITE_KEY, ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = (
    "rules:\n"
    + cart_abandoned("{connector: email, template: cart_reminder}")
    + "  - id: demo_requested\n    kind: threshold\n    match: {event: Demo Requested, trusted: true}\n"
    "    count: 1\n    within: 1h\n    action: {connector: slack}\n"
)


@pytest.fixture
def e2e_settings(settings: Settings, tmp_path: Path) -> Settings:
    return with_rules(
        settings,
        tmp_path,
        RULES,
        write_keys=(WRITE_KEY,),
        server_write_keys=(SERVER_KEY,),
        user_hash_secret=USER_HASH_SECRET,
    )


def browser_post(url: str, path: str, event: dict) -> requests.Response:
    """What analytics.js sends: a text/plain JSON body carrying the (public) browser write key."""
    body = json.dumps({**event, "writeKey": WRITE_KEY}).encode()
    return requests.post(url + path, data=body, headers={"Content-Type": "text/plain"}, timeout=10)


@pytest.fixture
def worker(e2e_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(e2e_settings, tmp_path / "worker.log") as process:
        yield process


def actions(reader: TopicReader, lead: str) -> list[dict]:
    return [a for a in (r.json() for r in reader.of("actions")) if a["lead_id"] == lead]


async def test_anonymous_cart_then_identify_nudges_the_identified_email(
    e2e_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready()
    server = ServerThread(lambda: create_app(e2e_settings)).start()
    try:
        async with TopicReader.from_settings(e2e_settings, "actions") as reader:
            # the shop's page (browser key) tracks the anonymous cart ...
            cart = {"type": "track", "event": "Product Added", "anonymousId": "anon-e2e", "messageId": "cart-1",
                    "properties": {"sku": "sku-1", "price": 25, "quantity": 1}}
            assert browser_post(server.url, "/v1/t", cart).status_code == 200
            # ... and the shop's back end (server key) identifies the shopper at login, minutes later in real
            # life: a separate request, so the cart is already in the anonymous lead
            client = SegmentClient(SERVER_KEY, host=server.url, sync_mode=True)
            client.identify("user-e2e", {"email": "zoe@example.com", "name": "Zoe"}, anonymous_id="anon-e2e")
            # whichever lead the cart ends up in, its deadline fires ~2.5 s after the event
            await reader.wait_for(
                lambda: actions(reader, "user-e2e") or actions(reader, "anon-e2e"),
                timeout_s=30,
                what="the abandonment nudge",
            )
            done = time.time()
            await reader.wait_for(lambda: time.time() - done > 1.0, timeout_s=5, what="drain")
    finally:
        server.stop()
    (nudge,) = actions(reader, "user-e2e")
    assert nudge["rule"] == "cart_abandoned" and nudge["connector"] == "email"
    assert nudge["context"]["traits"]["email"] == "zoe@example.com"
    assert actions(reader, "anon-e2e") == [], "the anonymous lead's cart moved to the known lead"


def recipient(record: dict) -> str | None:
    """The address the email connector sends an action to (connectors.context is where it reads it)."""
    return LeadView(Action.from_json(record)).email


async def test_a_browser_identify_cannot_redirect_a_known_leads_nudge(
    e2e_settings: Settings, worker: WorkerProcess
) -> None:
    """The victim's back end identified them; a visitor holding the public browser key then identifies the victim
    with the visitor's own address (no user hash, then a wrong one): the victim's next nudge still goes to the
    address the server identified, and the visitor's address reaches no action at all."""
    await worker.start_ready()
    server = ServerThread(lambda: create_app(e2e_settings)).start()
    try:
        async with TopicReader.from_settings(e2e_settings, "actions") as reader:
            SegmentClient(SERVER_KEY, host=server.url, sync_mode=True).identify(
                "victim-e2e", {"email": "victim@example.com", "name": "Vic"}
            )
            for n, given_hash in enumerate([None, "0" * 64, UserHashes.sign(USER_HASH_SECRET, "attacker-e2e")]):
                takeover = {"type": "identify", "userId": "victim-e2e", "messageId": f"takeover-{n}",
                            "traits": {"email": "attacker@evil.example", "name": "Vic"},
                            "context": {"userHash": given_hash, "nudge": {"trusted": True, "auth": "server"}}}
                assert browser_post(server.url, "/v1/i", takeover).status_code == 200
            cart = {"type": "track", "event": "Product Added", "userId": "victim-e2e", "messageId": "v-cart",
                    "properties": {"sku": "sku-9", "price": 40}}
            assert browser_post(server.url, "/v1/t", cart).status_code == 200
            await reader.wait_for(lambda: actions(reader, "victim-e2e"), timeout_s=30, what="the victim's nudge")
    finally:
        server.stop()
    (nudge,) = actions(reader, "victim-e2e")
    assert nudge["rule"] == "cart_abandoned" and nudge["connector"] == "email"
    assert recipient(nudge) == "victim@example.com"
    assert "attacker@evil.example" not in json.dumps(nudge)


async def test_a_trusted_matcher_fires_on_server_and_signed_events_only(
    e2e_settings: Settings, worker: WorkerProcess
) -> None:
    """`match: {event: Demo Requested, trusted: true}`: a visitor's browser event does not fire it (even one that
    claims `context.nudge.trusted`); the same event with the user's valid hash does, as does the back end's."""
    await worker.start_ready()
    server = ServerThread(lambda: create_app(e2e_settings)).start()
    try:
        async with TopicReader.from_settings(e2e_settings, "actions") as reader:
            forged = {"type": "track", "event": "Demo Requested", "userId": "lead-a", "messageId": "demo-forged",
                      "context": {"nudge": {"trusted": True, "auth": "server"}}}
            assert browser_post(server.url, "/v1/t", forged).status_code == 200
            signed = {"type": "track", "event": "Demo Requested", "userId": "lead-b", "messageId": "demo-signed",
                      "context": {"userHash": UserHashes.sign(USER_HASH_SECRET, "lead-b")}}
            assert browser_post(server.url, "/v1/t", signed).status_code == 200
            SegmentClient(SERVER_KEY, host=server.url, sync_mode=True).track("lead-c", "Demo Requested")
            await reader.wait_for(
                lambda: actions(reader, "lead-b") and actions(reader, "lead-c"), timeout_s=30, what="two alerts"
            )
            done = time.time()
            await reader.wait_for(lambda: time.time() - done > 1.0, timeout_s=5, what="drain")
    finally:
        server.stop()
    assert [a["rule"] for a in actions(reader, "lead-b")] == ["demo_requested"]
    assert [a["rule"] for a in actions(reader, "lead-c")] == ["demo_requested"]
    assert actions(reader, "lead-a") == []
