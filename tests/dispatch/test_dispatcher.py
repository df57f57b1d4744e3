"""The dispatcher end to end: real broker (Tansu), real Redis, real HTTP peers on loopback."""

from __future__ import annotations

import asyncio

import pytest

from engine.config import Settings
from engine.testing import RecordingPeer, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig

pytestmark = pytest.mark.integration


def webhook_yaml(peer: RecordingPeer, name: str = "webhook", extra: str = "") -> str:
    return f"""
  {name}:
    type: webhook
    url: {peer.url}/hook
    secret: whsec-test-123456
{extra}"""


def _delay_count(connector: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("nudge_delivery_delay_seconds_count", {"connector": connector}) or 0.0


async def test_500_then_200_is_delivered_once_and_replay_is_a_duplicate(rig: DispatchRig) -> None:
    peer = await rig.peer(script=[(500, {}, "boom")])
    await rig.start_dispatcher("connectors:" + webhook_yaml(peer))
    action = make_action("webhook")
    delays_before = _delay_count("webhook")
    await rig.produce([action])
    await wait_until(lambda: rig.deliveries.where(outcome="sent"), what="sent record")
    assert _delay_count("webhook") == delays_before + 1
    assert peer.ids() == [action.action_id, action.action_id]  # the 500, then the 200
    outcomes = [r["outcome"] for r in rig.deliveries.where(action_id=action.action_id)]
    assert outcomes == ["retried", "sent"]
    # The same action again (a replay): recognised by its id, not sent again.
    await rig.produce([action])
    await wait_until(lambda: rig.deliveries.where(outcome="duplicate"), what="duplicate record")
    assert len(peer.requests) == 2


async def test_429_retry_after_is_honoured(rig: DispatchRig) -> None:
    # Backoff is 50 ms here, so only the peer's Retry-After can explain a gap of a second.
    peer = await rig.peer(script=[(429, {"Retry-After": "1"}, "slow down")])
    await rig.start_dispatcher("connectors:" + webhook_yaml(peer))
    await rig.produce([make_action("webhook")])
    await wait_until(lambda: rig.deliveries.where(outcome="sent"), what="sent record")
    first, second = peer.requests
    assert second.at - first.at >= 0.95
    retried = rig.deliveries.where(outcome="retried")[0]
    assert retried["reason"] == "http_429"
    assert retried["next_attempt_ms"] - retried["at_ms"] >= 950


async def test_dead_peer_ends_in_dead_letters_while_another_connector_keeps_delivering(rig: DispatchRig) -> None:
    dead = await rig.peer(default=(503, {}, "down for maintenance"))
    alive = await rig.peer()
    await rig.start_dispatcher("connectors:" + webhook_yaml(dead, "dead") + webhook_yaml(alive, "alive"))
    doomed = [make_action("dead") for _ in range(5)]
    fine = [make_action("alive") for _ in range(20)]
    await rig.produce([a for pair in zip(doomed, fine, strict=False) for a in pair] + fine[5:])
    # The healthy connector delivers everything while the dead one is still retrying.
    await wait_until(lambda: len(set(alive.ids())) == 20, what="all actions to the healthy peer")
    await wait_until(lambda: len(rig.dead_letters.docs()) == 5, timeout_s=20, what="five dead letters")
    letters = {r["key"]: r for r in rig.dead_letters.docs()}
    assert set(letters) == {a.lead_id for a in doomed}
    letter = letters[doomed[0].lead_id]
    assert letter["source"] == "dispatcher"
    assert letter["reason"] == "retries_exhausted"
    assert "http_503" in letter["detail"] and "4 attempts" in letter["detail"]
    assert len(dead.requests) == 5 * 4  # max_attempts each, then given up
    # The delivery outcome and the dead letter go to two topics: either may be read first.
    await wait_until(lambda: len(rig.deliveries.where(outcome="failed")) == 5, what="five failed outcomes")
    assert len(alive.requests) == 20  # nothing doubled


async def test_malformed_records_are_dead_lettered_and_unknown_connectors_fail(rig: DispatchRig) -> None:
    await rig.start_dispatcher("connectors:\n  log:\n    type: log\n    stdout: false\n")
    await rig.produce([make_action("nowhere"), make_action("log")], raw=[b"not json at all", b'{"action_id": "x"}'])
    await wait_until(lambda: len(rig.dead_letters.docs()) == 3, what="three dead letters")
    await wait_until(lambda: rig.deliveries.where(outcome="sent"), what="the good action")
    reasons = sorted(r["reason"] for r in rig.dead_letters.docs())
    assert reasons == ["invalid_action", "not_json", "unknown_connector"]
    [unknown] = rig.dead_letters.where(reason="unknown_connector")
    assert "nowhere" in unknown["detail"] and "log" in unknown["detail"]


async def test_concurrency_limit_per_connector_and_a_hung_peer_does_not_stall_others(
    settings: Settings, rig: DispatchRig
) -> None:
    from prometheus_client import REGISTRY

    name = f"slow{settings.topic_prefix.replace('-', '')}"
    hung = await rig.peer(hold=asyncio.Event())
    alive = await rig.peer()
    extra = "    concurrency: 2\n    timeout_s: 5\n"
    await rig.start_dispatcher("connectors:" + webhook_yaml(hung, name, extra) + webhook_yaml(alive))
    slow = [make_action(name) for _ in range(5)]
    await rig.produce(slow + [make_action("webhook") for _ in range(10)])
    await wait_until(lambda: len(alive.requests) == 10, what="the healthy connector to deliver everything")
    await wait_until(lambda: len(hung.requests) == 2, what="two requests to the hung peer")
    await asyncio.sleep(0.3)  # a third concurrent request, if the limit leaked, would have arrived by now
    assert len(hung.requests) == 2
    assert REGISTRY.get_sample_value("nudge_connector_inflight", {"connector": name}) == 2
    assert hung.hold is not None
    hung.hold.set()  # the peer recovers: the rest goes through, two at a time
    await wait_until(lambda: len(rig.deliveries.where(connector=name, outcome="sent")) == 5, what="slow ones sent")
    assert sorted(set(hung.ids())) == sorted(a.action_id for a in slow)


async def test_two_dispatchers_split_the_work_and_send_each_action_once(settings: Settings, rig: DispatchRig) -> None:
    from prometheus_client import REGISTRY

    peer = await rig.peer()
    first = await rig.start_dispatcher("connectors:" + webhook_yaml(peer))
    second = rig.dispatcher("connectors:" + webhook_yaml(peer))
    actions = [make_action("webhook") for _ in range(40)]
    await rig.produce(actions[:20])
    await second.start()  # joins mid-stream: a rebalance while actions are in flight
    await wait_until(
        lambda: (
            bool(first.consumer and first.consumer.assignment())
            and bool(second.consumer and second.consumer.assignment())
        ),
        what="both dispatchers to own partitions",
    )
    await rig.produce(actions[20:])
    await wait_until(lambda: len(set(peer.ids())) == 40, timeout_s=30, what="all forty actions")
    await asyncio.sleep(0.5)  # a late double send would land here
    assert sorted(peer.ids()) == sorted(a.action_id for a in actions)
    assert len(rig.deliveries.where(outcome="sent")) == 40
    topic = settings.topic("actions")
    await wait_until(lambda: first.tracker.committed_offsets() or second.tracker.committed_offsets(), what="commits")
    lags = [
        REGISTRY.get_sample_value("nudge_consumer_lag_messages", {"topic": topic, "partition": str(p)})
        for p in range(settings.partitions)
    ]
    assert any(lag is not None for lag in lags)
