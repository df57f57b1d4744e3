"""The SLA notifications go through the real Slack and email connectors to real local receivers.

The connectors are another module's (connectors/); this test pins that the actions the assignment subsystem
builds are deliverable as they are: the Slack message mentions both reps, the emails reach both reps (not the
lead), and nothing depends on templates that do not exist.
"""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from engine.assignment import Assigner, SlaMonitor
from engine.config import Settings
from tests.assignment.conftest import ManualClock, rep, roster

pytestmark = pytest.mark.integration

LABEL = "Ada Lovelace (Engines Ltd)"
LEAD = {"traits": {"name": "Ada Lovelace", "email": "ada@example.org", "company": "Engines Ltd"}, "score": 91}


class Inbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
async def slack_receiver() -> AsyncIterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(orjson.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/services/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/services/hook", received
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as probe:  # Controller checks its port by connecting, so it needs a real number
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


async def sla_reassignment(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("alice"), rep("bob"), ack_within_s=60), clock=clock)
    await assigner.assign("ada", LEAD)
    clock.advance(60)
    [outcome] = await SlaMonitor(assigner).run_once()
    return outcome


def connector_env():
    from connectors.base import ConnectorEnv
    from connectors.rendering import Renderer

    return ConnectorEnv(settings=Settings(), renderer=Renderer())


async def test_slack_message_mentions_both_reps(redis_client, clock: ManualClock, slack_receiver):
    from connectors.slack import SlackConfig, SlackConnector

    webhook, slack_messages = slack_receiver
    slack = SlackConnector("slack", SlackConfig(webhook_url=webhook), connector_env())
    outcome = await sla_reassignment(redis_client, clock)
    await slack.start()
    try:
        for action in outcome.notifications:
            if action.connector == "slack":
                await slack.send(action)
    finally:
        await slack.close()

    [message] = slack_messages
    headline = message["blocks"][0]["text"]["text"]
    assert "<@UBOB> <@UALICE>" in headline  # real mentions, not escaped text
    assert "moved from Alice to Bob" in headline and "Ada Lovelace (Engines Ltd)" in headline
    fields = [f["text"] for block in message["blocks"] for f in block.get("fields", [])]
    assert "*Rep*\n<@UBOB>" in fields  # the new owner


async def test_emails_reach_both_reps_not_the_lead(redis_client, clock: ManualClock, smtp_inbox):
    from connectors.email import EmailConfig, EmailConnector

    smtp_port, inbox = smtp_inbox
    mail = EmailConnector("email", EmailConfig(port=smtp_port, security="none"), connector_env())
    outcome = await sla_reassignment(redis_client, clock)
    for action in outcome.notifications:
        if action.connector == "email":
            await mail.send(action)

    by_recipient = {m["To"].addresses[0].addr_spec: m for m in inbox.messages}
    assert set(by_recipient) == {"bob@example.com", "alice@example.com"}  # the reps, never the lead
    assert (
        by_recipient["bob@example.com"]["Subject"] == "Hot lead reassigned to you: Ada Lovelace (Engines Ltd)"
    )
    body = by_recipient["alice@example.com"].get_body(("plain",)).get_content()
    assert "now belongs to Bob" in body


async def test_emails_reach_both_reps_with_rep_templates(
    redis_client, clock: ManualClock, smtp_inbox, tmp_path
):
    """Same delivery with operator templates for the rep emails (a user template dir wins)."""
    from connectors.base import ConnectorEnv
    from connectors.email import EmailConfig, EmailConnector
    from connectors.rendering import Renderer

    (tmp_path / "email").mkdir()
    for name in ("lead_assigned", "lead_reassigned_away"):
        (tmp_path / "email" / f"{name}.subject.j2").write_text("{{ payload.subject }}")
        (tmp_path / "email" / f"{name}.txt.j2").write_text("Hi {{ payload.rep.name }},\n{{ payload.text }}")
        (tmp_path / "email" / f"{name}.html.j2").write_text("<p>{{ payload.text }}</p>")
    env = ConnectorEnv(settings=Settings(), renderer=Renderer(tmp_path))
    smtp_port, inbox = smtp_inbox
    mail = EmailConnector("email", EmailConfig(port=smtp_port, security="none"), env)
    outcome = await sla_reassignment(redis_client, clock)
    for action in outcome.notifications:
        if action.connector == "email":
            await mail.send(action)

    by_recipient = {m["To"].addresses[0].addr_spec: m for m in inbox.messages}
    assert set(by_recipient) == {"bob@example.com", "alice@example.com"}  # the reps, never the lead
    assert by_recipient["bob@example.com"]["Subject"] == "Hot lead reassigned to you: " + LABEL
    to_alice = by_recipient["alice@example.com"].get_body(("plain",)).get_content()
    assert to_alice.startswith("Hi Alice,") and "now belongs to Bob" in to_alice
    to_bob = by_recipient["bob@example.com"].get_body(("plain",)).get_content()
    assert to_bob.startswith("Hi Bob,") and "by Alice and is now yours" in to_bob
