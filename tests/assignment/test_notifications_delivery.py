"""The SLA notifications go through the real Slack and email connectors to real local receivers.

The connectors are another module's (connectors/); this test pins that the actions the assignment subsystem
builds are deliverable as they are: the Slack message mentions both reps, the emails reach both reps (not the
lead), and nothing depends on templates that do not exist.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from engine.assignment import Assigner, SlaMonitor
from engine.config import Settings
from engine.testing import RecordingPeer
from tests.assignment.conftest import ManualClock, rep, roster
from tests.connectors.smtp_peer import SmtpPeer

pytestmark = pytest.mark.integration

LABEL = "Ada Lovelace (Engines Ltd)"
LEAD = {"traits": {"name": "Ada Lovelace", "email": "ada@example.org", "company": "Engines Ltd"}, "score": 91}


async def sla_reassignment(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("alice"), rep("bob"), ack_within_s=60), clock=clock)
    await assigner.assign("ada", LEAD)
    clock.advance(60)
    [outcome] = await SlaMonitor(assigner).run_once()
    return outcome


def connector_env(templates: Path | None = None):
    from connectors.base import ConnectorEnv
    from connectors.rendering import Renderer

    return ConnectorEnv(settings=Settings(), renderer=Renderer(templates))


async def mail_the_reps(
    redis_client, clock: ManualClock, smtp_inbox: SmtpPeer, templates: Path | None = None
) -> dict[str, EmailMessage]:
    """The emails of an SLA reassignment, sent through the real email connector; by recipient."""
    from connectors.email import EmailConfig, EmailConnector

    mail = EmailConnector("email", EmailConfig(port=smtp_inbox.port, security="none"), connector_env(templates))
    outcome = await sla_reassignment(redis_client, clock)
    for action in outcome.notifications:
        if action.connector == "email":
            await mail.send(action)
    by_recipient = {m["To"].addresses[0].addr_spec: m for m in smtp_inbox.messages}
    assert set(by_recipient) == {"bob@example.com", "alice@example.com"}  # the reps, never the lead
    return by_recipient


async def test_slack_message_mentions_both_reps(redis_client, clock: ManualClock, http_peer: RecordingPeer):
    from connectors.slack import SlackConfig, SlackConnector

    slack = SlackConnector("slack", SlackConfig(webhook_url=f"{http_peer.url}/services/hook"), connector_env())
    outcome = await sla_reassignment(redis_client, clock)
    await slack.start()
    try:
        for action in outcome.notifications:
            if action.connector == "slack":
                await slack.send(action)
    finally:
        await slack.close()

    [message] = [r.json() for r in http_peer.requests]
    headline = message["blocks"][0]["text"]["text"]
    assert "<@UBOB> <@UALICE>" in headline  # real mentions, not escaped text
    assert "moved from Alice to Bob" in headline and "Ada Lovelace (Engines Ltd)" in headline
    fields = [f["text"] for block in message["blocks"] for f in block.get("fields", [])]
    assert "*Rep*\n<@UBOB>" in fields  # the new owner


async def test_emails_reach_both_reps_not_the_lead(redis_client, clock: ManualClock, smtp_inbox: SmtpPeer):
    by_recipient = await mail_the_reps(redis_client, clock, smtp_inbox)
    assert by_recipient["bob@example.com"]["Subject"] == "Hot lead reassigned to you: " + LABEL
    body = by_recipient["alice@example.com"].get_body(("plain",)).get_content()
    assert "now belongs to Bob" in body


async def test_emails_reach_both_reps_with_rep_templates(
    redis_client, clock: ManualClock, smtp_inbox: SmtpPeer, tmp_path: Path
):
    """Same delivery with operator templates for the rep emails (a user template dir wins)."""
    (tmp_path / "email").mkdir()
    for name in ("lead_assigned", "lead_reassigned_away"):
        (tmp_path / "email" / f"{name}.subject.j2").write_text("{{ payload.subject }}")
        (tmp_path / "email" / f"{name}.txt.j2").write_text("Hi {{ payload.rep.name }},\n{{ payload.text }}")
        (tmp_path / "email" / f"{name}.html.j2").write_text("<p>{{ payload.text }}</p>")
    by_recipient = await mail_the_reps(redis_client, clock, smtp_inbox, templates=tmp_path)
    assert by_recipient["bob@example.com"]["Subject"] == "Hot lead reassigned to you: " + LABEL
    to_alice = by_recipient["alice@example.com"].get_body(("plain",)).get_content()
    assert to_alice.startswith("Hi Alice,") and "now belongs to Bob" in to_alice
    to_bob = by_recipient["bob@example.com"].get_body(("plain",)).get_content()
    assert to_bob.startswith("Hi Bob,") and "by Alice and is now yours" in to_bob


async def test_the_reps_messages_carry_their_signed_links(
    redis_client, clock: ManualClock, http_peer: RecordingPeer, smtp_inbox: SmtpPeer
):
    """The Slack note and the email of an assignment show the rep's acknowledge and pass links (Slack mrkdwn
    links, email buttons and plain URLs), and the queue alert renders with its own template."""
    from connectors.email import EmailConfig, EmailConnector
    from connectors.slack import SlackConfig, SlackConnector
    from engine.assignment.links import RepLinks
    from engine.assignment.notifications import assignment_actions, queue_alert_actions

    links = RepLinks(b"k" * 32, "https://reps.example.com", 600, clock=clock)
    assigner = Assigner(redis_client, roster(rep("alice", capacity=1)), clock=clock, links=links)
    lead = {**LEAD, "explanation": "viewed pricing 3 times"}
    assignment = await assigner.assign("ada", lead)
    slack_note, email = assignment_actions(assignment, lead, 0)
    ack = assignment.links["ack"]

    slack = SlackConnector("slack", SlackConfig(webhook_url=f"{http_peer.url}/hook"), connector_env())
    await slack.start()
    try:
        await slack.send(slack_note)
        await assigner.assign_or_queue("grace", {"traits": {"name": "Grace"}, "score": 70})
        clock.advance(3600)
        [item] = await assigner.queue()
        [alert] = queue_alert_actions(item, assigner.now_ms(), "#sales")
        await slack.send(alert)
    finally:
        await slack.close()
    note, waiting = [r.json() for r in http_peer.requests]
    headline = note["blocks"][0]["text"]["text"]
    assert f"<{ack.replace('&', '&amp;')}|Acknowledge>" in headline
    assert "|Pass it on>" in headline and "<https://reps.example.com/inbox|Inbox>" in headline
    assert "Grace has waited 60 min for a rep" in waiting["blocks"][0]["text"]["text"]
    assert waiting["channel"] == "#sales"

    mail = EmailConnector("email", EmailConfig(port=smtp_inbox.port, security="none"), connector_env())
    await mail.send(email)
    [message] = smtp_inbox.messages
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert f"Acknowledge it (one click): {ack}" in text and "Why it fired: viewed pricing 3 times" in text
    assert "POST /v1/leads" not in text  # the links replace the API hint
    assert f'href="{ack.replace("&", "&amp;")}"' in html and "Pass it on</a>" in html
