"""The hot-lead flow end to end: the shipped rules make a lead SQL, the real dispatcher assigns a rep (real Redis),
the Slack alert mentions the rep (aiohttp receiver), the rep gets an email (aiosmtpd), the assignment is published
to `lead-updates`, and the `customer` stage frees the rep. (The SLA path is tested in tests/assignment.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from engine.assignment import Assigner, load_roster
from engine.assignment.relay import ChangeRelay
from engine.config import ConfigError, Settings
from engine.core import evaluate
from engine.core.model import Action
from engine.dispatch.hot_leads import HotLeads, build_assigner
from engine.events import parse_event
from engine.kafka.topics import LEAD_UPDATES
from engine.language import load_rules
from engine.testing import RecordingPeer, TopicReader, wait_until
from tests.connectors.smtp_peer import SmtpPeer
from tests.dispatch.rig import DispatchRig

pytestmark = pytest.mark.integration

RULES = load_rules([Path(__file__).resolve().parents[2] / "rules"])
ROSTER = """
strategy: round_robin
sla: {ack_within: 15m}
reps:
  - {id: dana, name: Dana Smith, email: dana@sales.example, slack_id: U0DANA, capacity: 5}
"""


def lead_actions(lead_id: str) -> list[Action]:
    """The shipped lead rules on a short journey: sign up, demo request (→ sql), order (→ customer)."""
    docs = [
        {"type": "identify", "traits": {"name": "Ada Lovelace", "email": "ada@engines.example", "company": "Engines"}},
        {"type": "track", "event": "Signed Up", "messageId": "m1"},
        {"type": "track", "event": "Demo Requested", "messageId": "m2"},
        {"type": "track", "event": "Order Completed", "messageId": "m3"},
    ]
    state, actions = None, []
    for n, doc in enumerate(docs):
        doc.update({"userId": lead_id, "timestamp": 1_767_607_200_000 + n * 60_000})
        result = evaluate(RULES, state, parse_event(doc))
        state, actions = result.state, actions + result.actions
    # The journey happened in January 2026: its actions' `expires_after` passed long ago. This test is about the
    # assignment, not expiry (tests/dispatch/test_recheck_e2e.py): send them as if fired just now.
    return [dataclasses.replace(a, expires_at_ms=None) if hasattr(a, "expires_at_ms") else a for a in actions]


def connectors_yaml(slack_url: str, smtp_port: int) -> str:
    return f"""
connectors:
  slack: {{type: slack, webhook_url: "{slack_url}"}}
  email: {{type: email, port: {smtp_port}, security: none}}
"""


async def test_sql_lead_is_assigned_rep_is_mentioned_and_mailed_then_released_as_customer(
    settings: Settings, tmp_path: Path, redis_url: str, http_peer: RecordingPeer, smtp_inbox: SmtpPeer
) -> None:
    (tmp_path / "reps.yaml").write_text(ROSTER)
    settings = dataclasses.replace(settings, reps_path=tmp_path / "reps.yaml")
    inbox = smtp_inbox
    actions = lead_actions("ada")
    by_template = {a.template: a for a in actions}
    hot, won = by_template["hot_lead"], by_template["lead_won"]
    assert hot.payload["assign"] is True and hot.context["stage"] == "sql"
    assert won.payload["release_owner"] is True and won.context["stage"] == "customer"

    rig = await DispatchRig(settings).start()  # the settings with the roster, not the `rig` fixture's
    deliveries = rig.deliveries
    updates = await TopicReader.from_settings(settings, LEAD_UPDATES).start()
    redis = aioredis.Redis.from_url(redis_url)
    assigner = Assigner(redis, load_roster(settings.reps_path))
    try:
        await rig.start_dispatcher(connectors_yaml(f"{http_peer.url}/services/hook", inbox.port))
        await rig.produce([hot])
        await wait_until(lambda: deliveries.where(action_id=hot.action_id, outcome="sent"), what="hot-lead alert sent")
        await wait_until(lambda: inbox.messages, what="email to the rep")

        slack_messages = [r.json() for r in http_peer.requests]
        [alert] = [m for m in slack_messages if "Hot lead" in m["blocks"][0]["text"]["text"]]
        assert "<@U0DANA>, this one is yours" in alert["blocks"][0]["text"]["text"]
        [mail] = inbox.messages
        assert mail["To"].addresses[0].addr_spec == "dana@sales.example"  # the rep, not the lead
        assert "Ada Lovelace" in mail["Subject"]
        body = mail.get_body(("plain",)).get_content()
        assert "Stage: sql" in body and "/links/ack?" in body and "/inbox" in body  # signed one-click links
        owner = await assigner.owner("ada")
        assert owner is not None and owner.rep_id == "dana"
        # The assignment reaches lead-updates through the store's outbox (relayed by `nudge reps serve`).
        relayed: list[dict] = []

        async def capture(key: str, value: bytes) -> None:
            relayed.append(orjson.loads(value))

        relay = ChangeRelay(assigner.store, capture)
        await relay.run_once()
        assert [(c["lead_id"], c["kind"]) for c in relayed if c["kind"] == "assigned"] == [("ada", "assigned")]

        # Replaying the alert assigns nobody new and mails nobody again.
        await rig.produce([hot])
        await wait_until(lambda: deliveries.where(action_id=hot.action_id, outcome="duplicate"), what="duplicate")
        await relay.run_once()
        assert len(inbox.messages) == 1 and len([c for c in relayed if c["kind"] == "assigned"]) == 1

        # The order makes the lead a customer: the won message thanks the rep, and the rep's capacity is free.
        await rig.produce([won])
        await wait_until(lambda: deliveries.where(action_id=won.action_id, outcome="sent"), what="won message sent")
        later = [r.json() for r in http_peer.requests[len(slack_messages) :]]
        assert any("<@U0DANA>" in m["blocks"][0]["text"]["text"] for m in later)
        assert await assigner.owner("ada") is None
        [status] = await assigner.rep_statuses()
        assert status.open_leads == 0
    finally:
        await rig.close()
        await updates.stop()
        await redis.aclose()


async def test_without_a_roster_file_alerts_go_out_unassigned_and_a_bad_roster_stops_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = Settings(reps_path=tmp_path / "missing.yaml")
    assert build_assigner(missing, redis=None) is None  # type: ignore[arg-type]
    assert "no reps roster at" in caplog.text and "NUDGE_REPS_PATH" in caplog.text

    async def never(*args: object) -> None:
        raise AssertionError("nothing may be delivered or published without an assigner")

    hot = next(a for a in lead_actions("bo") if a.template == "hot_lead")
    assert await HotLeads(None, never, never, {"slack", "email"}).prepare(hot) == hot

    (tmp_path / "bad.yaml").write_text("reps:\n  - {id: x, capacity: -1}\n")
    with pytest.raises(ConfigError, match="NUDGE_REPS_PATH"):
        build_assigner(Settings(reps_path=tmp_path / "bad.yaml"), redis=None)  # type: ignore[arg-type]
