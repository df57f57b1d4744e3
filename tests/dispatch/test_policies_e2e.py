"""Caps, quiet hours and consent through the running dispatcher (real broker, Redis, HTTP peer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.config import Settings
from engine.kafka.topics import DELIVERIES
from tests.connectors.helpers import (
    Peer,
    TopicReader,
    build_dispatcher,
    make_action,
    produce_actions,
    wait_for,
)

pytestmark = pytest.mark.integration


def yaml_for(peer: Peer, policies: str) -> str:
    return f"""
connectors:
  mkt:
    type: webhook
    url: {peer.url}/mkt
policies:
{policies}
"""


async def test_frequency_cap_defers_to_the_next_free_slot_or_drops(settings: Settings) -> None:
    peer = await Peer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    policies = "  caps:\n    - {connector: mkt, max: 1, per: 2s}\n"
    dispatcher = build_dispatcher(settings, yaml_for(peer, policies))
    first = make_action("mkt", lead_id="capped")
    second = make_action("mkt", lead_id="capped")
    dropped = make_action("mkt", lead_id="capped", on_cap="drop")
    alert = make_action("mkt", lead_id="capped", marketing=False)  # caps count marketing only by default
    try:
        await dispatcher.start()
        await produce_actions(settings, [first])
        await wait_for(lambda: deliveries.where(action_id=first.action_id, outcome="sent"), what="first sent")
        await produce_actions(settings, [second, dropped, alert])
        await wait_for(
            lambda: deliveries.where(action_id=second.action_id, outcome="deferred"), what="deferral"
        )
        deferred = deliveries.where(action_id=second.action_id, outcome="deferred")[0]
        assert deferred["reason"] == "frequency_cap"
        sent_at = deliveries.where(action_id=first.action_id, outcome="sent")[0]["at_ms"]
        assert abs(deferred["next_attempt_ms"] - (sent_at + 2000)) < 1000
        await wait_for(
            lambda: deliveries.where(action_id=second.action_id, outcome="sent"), what="deferred sent"
        )
        assert deliveries.where(action_id=dropped.action_id)[0]["reason"] == "frequency_cap_drop"
        assert deliveries.where(action_id=dropped.action_id)[0]["outcome"] == "suppressed"
        await wait_for(lambda: deliveries.where(action_id=alert.action_id, outcome="sent"), what="alert sent")
        assert sorted(peer.ids()) == sorted([first.action_id, second.action_id, alert.action_id])
        assert await dispatcher.schedule.size() == 0
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await peer.stop()


async def test_quiet_hours_follow_the_lead_timezone(settings: Settings) -> None:
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    peer = await Peer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    policies = f'  quiet_hours: {{start: "{start}", end: "{end}", connectors: [mkt]}}\n'
    dispatcher = build_dispatcher(settings, yaml_for(peer, policies))
    night = make_action("mkt", context={"traits": {"email": "a@example.com", "timezone": "UTC"}})
    # UTC+12: the same instant is half a day later there, outside the two-hour window.
    day = make_action("mkt", context={"traits": {"email": "b@example.com", "timezone": "Etc/GMT-12"}})
    rep_alert = make_action("mkt", marketing=False, context={"traits": {"timezone": "UTC"}})
    try:
        await dispatcher.start()
        await produce_actions(settings, [night, day, rep_alert])
        await wait_for(lambda: len(deliveries.records) >= 3, what="three outcomes")
        held = deliveries.where(action_id=night.action_id)[0]
        assert held["outcome"] == "deferred" and held["reason"] == "quiet_hours"
        resume = datetime.fromtimestamp(held["next_attempt_ms"] / 1000, UTC)
        assert resume.strftime("%H:%M") == end and 0 < (resume - now).total_seconds() <= 3600 + 60
        assert deliveries.where(action_id=day.action_id)[0]["outcome"] == "sent"
        assert deliveries.where(action_id=rep_alert.action_id)[0]["outcome"] == "sent"
        assert await dispatcher.schedule.next_due_ms() == held["next_attempt_ms"]
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await peer.stop()


async def test_consent_suppresses_marketing_only(settings: Settings) -> None:
    peer = await Peer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    dispatcher = build_dispatcher(settings, yaml_for(peer, "  consent: {connectors: [mkt]}\n"))
    unsubscribed = make_action("mkt", context={"traits": {"email": "u@example.com", "unsubscribed": True}})
    withdrawn = make_action("mkt", context={"traits": {"email": "w@example.com", "marketing_consent": "no"}})
    alert = make_action("mkt", marketing=False, context={"traits": {"unsubscribed": True}})
    ok = make_action("mkt", context={"traits": {"email": "ok@example.com", "consent": True}})
    try:
        await dispatcher.start()
        await produce_actions(settings, [unsubscribed, withdrawn, alert, ok])
        await wait_for(lambda: len(deliveries.records) >= 4, what="four outcomes")
        by_id = {r["action_id"]: r for r in deliveries.records}
        assert (by_id[unsubscribed.action_id]["outcome"], by_id[unsubscribed.action_id]["reason"]) == (
            "suppressed",
            "unsubscribed",
        )
        assert by_id[withdrawn.action_id]["reason"] == "consent_withdrawn"
        assert by_id[alert.action_id]["outcome"] == "sent"
        assert by_id[ok.action_id]["outcome"] == "sent"
        assert sorted(peer.ids()) == sorted([alert.action_id, ok.action_id])
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await peer.stop()
