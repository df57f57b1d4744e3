"""Issue 16 on the real stack (Tansu broker, Redis, HTTP and SMTP peers): every held action is re-checked when it
is finally sent, on the lead's current situation as the worker reports it on `lead-updates` (here produced by the
test in the worker's hand-over format: `rig.converted(...)`, `rig.consent(...)`); priority under caps; and the
phishing-relay defences of issue 15 through the running dispatcher."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from engine.config import ConfigError, Settings
from engine.dispatch.dispatcher import Dispatcher
from engine.testing import RecordingPeer, nudge_command, wait_until
from tests.connectors.helpers import make_action
from tests.connectors.smtp_peer import SmtpPeer
from tests.dispatch.rig import DispatchRig, consent, converted, process_env

pytestmark = pytest.mark.integration


def quiet_for(seconds: float) -> tuple[str, int]:
    """A quiet-hours window that started an hour ago and ends `seconds` from now (to the second), and that end in
    epoch ms."""
    now = datetime.now(UTC)
    end = (now + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(seconds=1)
    start = now - timedelta(hours=1)
    policy = f'  quiet_hours: {{start: "{start:%H:%M:%S}", end: "{end:%H:%M:%S}", connectors: [mkt]}}\n'
    return policy, int(end.timestamp() * 1000)


def connectors(peer: RecordingPeer, policies: str) -> str:
    return f"""
connectors:
  mkt: {{type: webhook, url: "{peer.url}/mkt"}}
policies:
  consent: {{connectors: [mkt]}}
{policies}"""


def final(rig: DispatchRig, action_id: str) -> dict[str, Any] | None:
    done = [r for r in rig.deliveries.where(action_id=action_id) if r["outcome"] not in ("deferred", "retried")]
    return done[-1] if done else None


def outcome(rig: DispatchRig, action_id: str) -> tuple[str, str] | None:
    record = final(rig, action_id)
    return (record["outcome"], record["reason"]) if record else None


async def test_held_actions_are_suppressed_when_the_lead_converted_unsubscribed_or_they_expired(
    rig: DispatchRig,
) -> None:
    peer = await rig.peer()
    policy, window_end_ms = quiet_for(6)
    dispatcher = await rig.start_dispatcher(connectors(peer, policy))
    now_ms = int(time.time() * 1000)
    buys = make_action("mkt", rule="cart_abandoned")
    unsubscribes = make_action("mkt", rule="cart_abandoned")
    unsubscribes_later = make_action("mkt", lead_id=unsubscribes.lead_id, rule="browse_abandoned")
    withdraws = make_action("mkt", rule="cart_abandoned")
    expires = make_action("mkt", rule="cart_abandoned", expires_at_ms=now_ms + 2_500)
    control = make_action("mkt", rule="cart_abandoned")
    held = [buys, unsubscribes, unsubscribes_later, withdraws, expires, control]
    await rig.produce(held)
    await wait_until(lambda: len(rig.deliveries.where(outcome="deferred")) == len(held), what="all held")
    assert {r["reason"] for r in rig.deliveries.docs()} == {"quiet_hours"}

    produced_ms = int(time.time() * 1000)
    await rig.produce_updates(
        [
            converted(buys),  # Order Completed after the reminder fired
            consent(unsubscribes.lead_id, reason="unsubscribed", source="unsubscribe"),
            consent(withdraws.lead_id, reason="consent_withdrawn", source="identify"),
        ]
    )
    await wait_until(
        lambda: all(final(rig, a.action_id) for a in (buys, unsubscribes, unsubscribes_later, withdraws)),
        timeout_s=5,
        what="the converted and unsubscribed leads' actions re-checked at once",
    )
    assert outcome(rig, buys.action_id) == ("suppressed", "converted")
    assert outcome(rig, unsubscribes.action_id) == ("suppressed", "unsubscribed")
    assert outcome(rig, unsubscribes_later.action_id) == ("suppressed", "unsubscribed")
    assert outcome(rig, withdraws.action_id) == ("suppressed", "consent_withdrawn")
    # Every queued marketing action of the unsubscribed lead, due or not, within 1 s of the consent record.
    for action in (unsubscribes, unsubscribes_later):
        latency_ms = final(rig, action.action_id)["at_ms"] - produced_ms  # type: ignore[index]
        assert latency_ms < 1000, latency_ms
    assert time.time() * 1000 < window_end_ms  # all of that while the quiet period still held them

    await wait_until(lambda: final(rig, control.action_id), timeout_s=15, what="the control sent at the window end")
    assert outcome(rig, control.action_id) == ("sent", "")
    await wait_until(lambda: final(rig, expires.action_id), timeout_s=5, what="the expired one")
    assert outcome(rig, expires.action_id) == ("suppressed", "expired")
    assert peer.ids() == [control.action_id]
    assert final(rig, control.action_id)["at_ms"] >= window_end_ms  # type: ignore[index]
    assert await dispatcher.schedule.size() == 0
    for reason in ("converted", "unsubscribed", "consent_withdrawn", "expired"):
        labels = {"connector": "mkt", "outcome": "suppressed", "reason": reason}
        assert (REGISTRY.get_sample_value("nudge_actions_total", labels) or 0) >= 1, reason


async def test_the_recheck_holds_across_a_dispatcher_restart(rig: DispatchRig) -> None:
    peer = await rig.peer()
    policy, window_end_ms = quiet_for(10)
    yaml_text = connectors(peer, policy)
    first = await rig.start_dispatcher(yaml_text)
    now_ms = int(time.time() * 1000)
    buys_early = make_action("mkt")
    buys_while_down = make_action("mkt")
    unsubscribes = make_action("mkt", rule="cart_abandoned")
    unsubscribes_later = make_action("mkt", lead_id=unsubscribes.lead_id, rule="browse_abandoned")
    expires = make_action("mkt", expires_at_ms=now_ms + 4_000)
    control = make_action("mkt")
    held = [buys_early, buys_while_down, unsubscribes, unsubscribes_later, expires, control]
    await rig.produce(held)
    await wait_until(lambda: len(rig.deliveries.where(outcome="deferred")) == len(held), what="all held")
    await rig.produce_updates([converted(buys_early)])  # seen by the first dispatcher: kept in Redis
    await wait_until(lambda: final(rig, buys_early.action_id), timeout_s=5, what="the first conversion")
    await asyncio.sleep(0.5)  # let it commit its offsets, as a running dispatcher would have
    await first.kill()  # a crash while the actions are held

    await rig.produce_updates(
        [converted(buys_while_down), consent(unsubscribes.lead_id, reason="unsubscribed", source="unsubscribe")]
    )
    second = await rig.start_dispatcher(yaml_text)  # catches up with lead-updates before it sends anything
    await wait_until(lambda: final(rig, control.action_id), timeout_s=20, what="the control sent at the window end")
    await wait_until(lambda: final(rig, expires.action_id), timeout_s=5, what="the expired one")
    assert outcome(rig, buys_early.action_id) == ("suppressed", "converted")
    assert outcome(rig, buys_while_down.action_id) == ("suppressed", "converted")
    assert outcome(rig, unsubscribes.action_id) == ("suppressed", "unsubscribed")
    assert outcome(rig, unsubscribes_later.action_id) == ("suppressed", "unsubscribed")
    assert outcome(rig, expires.action_id) == ("suppressed", "expired")
    assert outcome(rig, control.action_id) == ("sent", "")
    assert peer.ids() == [control.action_id]
    assert final(rig, control.action_id)["at_ms"] >= window_end_ms  # type: ignore[index]
    assert await second.schedule.size() == 0


async def test_higher_priority_wins_when_caps_let_only_one_through(rig: DispatchRig) -> None:
    peer = await rig.peer()
    policy, _end = quiet_for(3)
    caps = "  caps:\n    - {connector: mkt, max: 1, per: 1h}\n"
    await rig.start_dispatcher(connectors(peer, policy + caps))
    low = make_action("mkt", lead_id="prio", rule="browse_abandoned", priority=1)
    high = make_action("mkt", lead_id="prio", rule="cart_abandoned", priority=9)
    middle = make_action("mkt", lead_id="prio", rule="welcome", priority=5)
    await rig.produce([low, middle, high])  # the lowest first: arrival order must not matter
    await wait_until(lambda: len(rig.deliveries.where(outcome="deferred")) == 3, what="all held")
    await wait_until(lambda: rig.deliveries.where(outcome="sent"), timeout_s=15, what="one sent at the window end")
    await wait_until(
        lambda: len([r for r in rig.deliveries.docs() if r["reason"] == "frequency_cap"]) == 2,
        what="the others deferred by the cap",
    )
    assert peer.ids() == [high.action_id]
    capped = {r["action_id"] for r in rig.deliveries.docs() if r["reason"] == "frequency_cap"}
    assert capped == {low.action_id, middle.action_id}


ATTACK_CART = {
    "items": [
        {"product_id": "p1", "name": "Desk", "price": 10, "quantity": 1, "url": "javascript:alert(document.cookie)"},
        {"product_id": "p2", "name": "Lamp at https://evil.example/login", "price": 5, "quantity": 1,
         "url": "https://evil.example/login", "image_url": "https://evil.example/pixel.gif"},
    ],
    "url": "https://evil.example/cart",
}  # fmt: skip


async def test_per_recipient_cap_links_and_subjects_through_the_dispatcher(
    rig: DispatchRig, smtp_inbox: SmtpPeer
) -> None:
    """One mailbox behind many lead ids (as a visitor could make it) gets at most the default 3 marketing mails a
    day; item links lead only to the shop; subjects carry no text the visitor typed; a misspelt template fails."""
    await rig.start_dispatcher(
        f"""
connectors:
  shop:
    type: email
    host: 127.0.0.1
    port: {smtp_inbox.port}
    security: none
    site_url: https://shop.example
    from: "Shop <shop@example.com>"
"""
    )
    spellings = ["victim@example.com", "Victim@Example.com", "victim+a@example.com", "VICTIM+b@example.com"]
    to_victim = [
        make_action(
            "shop",
            context={"traits": {"email": spellings[i % 4], "name": "WIN at evil.example"}, "cart": ATTACK_CART},
        )
        for i in range(10)
    ]
    other = make_action("shop", context={"traits": {"email": "other@example.com"}, "cart": ATTACK_CART})
    misspelt = make_action("shop", template="cart_remindr")
    await rig.produce([*to_victim, other, misspelt])
    await wait_until(lambda: len(rig.deliveries.records) >= 12, what="every action's first outcome")
    sent = [r["action_id"] for r in rig.deliveries.where(outcome="sent")]
    capped = [r for r in rig.deliveries.where(outcome="deferred") if r["reason"] == "frequency_cap"]
    assert len([a for a in to_victim if a.action_id in sent]) == 3 and len(capped) == 7
    assert other.action_id in sent
    assert outcome(rig, misspelt.action_id) == ("failed", "unknown_template")
    await wait_until(lambda: rig.dead_letters.records, what="its dead letter")
    assert [d["reason"] for d in rig.dead_letters.docs()] == ["unknown_template"]
    await wait_until(lambda: len(smtp_inbox.messages) == 4, what="four messages in the inbox")
    victims = [e.rcpt_tos[0].lower().replace("+a", "").replace("+b", "") for e in smtp_inbox.envelopes]
    assert victims.count("victim@example.com") == 3
    for message in smtp_inbox.messages:
        raw = message.as_string()
        assert "javascript" not in raw.lower() and "evil.example" not in raw
        assert message["Subject"] == "You left something in your cart"
        assert "https://shop.example/products/p1" in raw and "https://shop.example/products/p2" in raw


async def test_marketing_email_without_unsubscribe_secret_is_refused_outside_dev(settings: Settings) -> None:
    from engine.dispatch.config import parse_connectors

    config = parse_connectors(
        "connectors:\n  shop: {type: email, unsubscribe_base_url: 'https://c.example'}\n",
        env={"NUDGE_BROKER_PROFILE": "kafka"},
    )
    dispatcher = Dispatcher(settings.with_(broker_profile="kafka"), config)
    with pytest.raises(ConfigError, match=r"shop\.unsubscribe_secret is empty"):
        await dispatcher.start()  # before connecting anything: nothing to clean up


def test_nudge_dispatch_refuses_short_secrets_and_missing_unsubscribe_secret_outside_dev(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_text("connectors:\n  hook: {type: webhook, url: 'http://x', secret: '${HOOK_SECRET}'}\n")
    env = process_env(settings, NUDGE_BROKER_PROFILE="kafka", HOOK_SECRET="short-but-set")
    run = subprocess.run(
        [*nudge_command(), "dispatch", "--check", "--connectors", str(path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert f"{path}:2: connectors.hook.secret: a signing key must be at least 32 bytes" in run.stderr
    assert "short-but-set" not in run.stderr
    path.write_text("connectors:\n  shop: {type: email, unsubscribe_base_url: 'https://c.example'}\n")
    run = subprocess.run(
        [*nudge_command(), "dispatch", "--check", "--connectors", str(path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2 and f"{path}: connectors.shop.unsubscribe_secret is empty" in run.stderr
    dev = {**env, "NUDGE_BROKER_PROFILE": "dev"}
    run = subprocess.run(
        [*nudge_command(), "dispatch", "--check", "--connectors", str(path)], env=dev, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
