"""Caps, quiet hours and consent through the running dispatcher (real broker, Redis, HTTP peer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.testing import RecordingPeer, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig

pytestmark = pytest.mark.integration


def yaml_for(peer: RecordingPeer, policies: str) -> str:
    return f"""
connectors:
  mkt:
    type: webhook
    url: {peer.url}/mkt
policies:
{policies}
"""


async def test_frequency_cap_defers_to_the_next_free_slot_or_drops(rig: DispatchRig) -> None:
    peer = await rig.peer()
    dispatcher = await rig.start_dispatcher(yaml_for(peer, "  caps:\n    - {connector: mkt, max: 1, per: 2s}\n"))
    deliveries = rig.deliveries
    first = make_action("mkt", lead_id="capped")
    second = make_action("mkt", lead_id="capped")
    dropped = make_action("mkt", lead_id="capped", on_cap="drop")
    alert = make_action("mkt", lead_id="capped", marketing=False)  # caps count marketing only by default
    await rig.produce([first])
    await wait_until(lambda: deliveries.where(action_id=first.action_id, outcome="sent"), what="first sent")
    await rig.produce([second, dropped, alert])
    await wait_until(lambda: deliveries.where(action_id=second.action_id, outcome="deferred"), what="deferral")
    deferred = deliveries.where(action_id=second.action_id, outcome="deferred")[0]
    assert deferred["reason"] == "frequency_cap"
    sent_at = deliveries.where(action_id=first.action_id, outcome="sent")[0]["at_ms"]
    assert abs(deferred["next_attempt_ms"] - (sent_at + 2000)) < 1000
    await wait_until(lambda: deliveries.where(action_id=second.action_id, outcome="sent"), what="deferred sent")
    assert deliveries.where(action_id=dropped.action_id)[0]["reason"] == "frequency_cap_drop"
    assert deliveries.where(action_id=dropped.action_id)[0]["outcome"] == "suppressed"
    await wait_until(lambda: deliveries.where(action_id=alert.action_id, outcome="sent"), what="alert sent")
    assert sorted(peer.ids()) == sorted([first.action_id, second.action_id, alert.action_id])
    assert await dispatcher.schedule.size() == 0


async def test_quiet_hours_follow_the_lead_timezone(rig: DispatchRig) -> None:
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    peer = await rig.peer()
    policies = f'  quiet_hours: {{start: "{start}", end: "{end}", connectors: [mkt]}}\n'
    dispatcher = await rig.start_dispatcher(yaml_for(peer, policies))
    night = make_action("mkt", context={"traits": {"email": "a@example.com", "timezone": "UTC"}})
    # UTC+12: the same instant is half a day later there, outside the two-hour window.
    day = make_action("mkt", context={"traits": {"email": "b@example.com", "timezone": "Etc/GMT-12"}})
    rep_alert = make_action("mkt", marketing=False, context={"traits": {"timezone": "UTC"}})
    await rig.produce([night, day, rep_alert])
    await wait_until(lambda: len(rig.deliveries.records) >= 3, what="three outcomes")
    held = rig.deliveries.where(action_id=night.action_id)[0]
    assert held["outcome"] == "deferred" and held["reason"] == "quiet_hours"
    resume = datetime.fromtimestamp(held["next_attempt_ms"] / 1000, UTC)
    assert resume.strftime("%H:%M") == end and 0 < (resume - now).total_seconds() <= 3600 + 60
    assert rig.deliveries.where(action_id=day.action_id)[0]["outcome"] == "sent"
    assert rig.deliveries.where(action_id=rep_alert.action_id)[0]["outcome"] == "sent"
    assert await dispatcher.schedule.next_due_ms() == held["next_attempt_ms"]


async def test_consent_suppresses_marketing_only(rig: DispatchRig) -> None:
    peer = await rig.peer()
    await rig.start_dispatcher(yaml_for(peer, "  consent: {connectors: [mkt]}\n"))
    unsubscribed = make_action("mkt", context={"traits": {"email": "u@example.com", "unsubscribed": True}})
    withdrawn = make_action("mkt", context={"traits": {"email": "w@example.com", "marketing_consent": "no"}})
    alert = make_action("mkt", marketing=False, context={"traits": {"unsubscribed": True}})
    ok = make_action("mkt", context={"traits": {"email": "ok@example.com", "consent": True}})
    await rig.produce([unsubscribed, withdrawn, alert, ok])
    await wait_until(lambda: len(rig.deliveries.records) >= 4, what="four outcomes")
    by_id = {r["action_id"]: r for r in rig.deliveries.docs()}
    assert (by_id[unsubscribed.action_id]["outcome"], by_id[unsubscribed.action_id]["reason"]) == (
        "suppressed",
        "unsubscribed",
    )
    assert by_id[withdrawn.action_id]["reason"] == "consent_withdrawn"
    assert by_id[alert.action_id]["outcome"] == "sent"
    assert by_id[ok.action_id]["outcome"] == "sent"
    assert sorted(peer.ids()) == sorted([alert.action_id, ok.action_id])
