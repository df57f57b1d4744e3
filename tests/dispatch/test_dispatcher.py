"""The dispatcher end to end: real broker (Tansu), real Redis, real HTTP peers on loopback."""

from __future__ import annotations

import asyncio

import pytest

from engine.config import Settings
from engine.kafka.topics import DEAD_LETTERS, DELIVERIES
from tests.connectors.helpers import (
    Peer,
    TopicReader,
    build_dispatcher,
    make_action,
    produce_actions,
    wait_for,
)

pytestmark = pytest.mark.integration


def webhook_yaml(peer: Peer, name: str = "webhook", extra: str = "") -> str:
    return f"""
  {name}:
    type: webhook
    url: {peer.url}/hook
    secret: whsec-test-123456
{extra}"""


def _delay_count(connector: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("nudge_delivery_delay_seconds_count", {"connector": connector}) or 0.0


async def test_500_then_200_is_delivered_once_and_replay_is_a_duplicate(settings: Settings) -> None:
    peer = await Peer(script=[(500, {}, "boom")]).start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    dispatcher = build_dispatcher(settings, "connectors:" + webhook_yaml(peer))
    action = make_action("webhook")
    delays_before = _delay_count("webhook")
    try:
        await dispatcher.start()
        await produce_actions(settings, [action])
        await wait_for(lambda: deliveries.where(outcome="sent"), what="sent record")
        assert _delay_count("webhook") == delays_before + 1
        assert peer.ids() == [action.action_id, action.action_id]  # the 500, then the 200
        outcomes = [r["outcome"] for r in deliveries.where(action_id=action.action_id)]
        assert outcomes == ["retried", "sent"]
        # The same action again (a replay): recognised by its id, not sent again.
        await produce_actions(settings, [action])
        await wait_for(lambda: deliveries.where(outcome="duplicate"), what="duplicate record")
        assert len(peer.requests) == 2
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await peer.stop()


async def test_429_retry_after_is_honoured(settings: Settings) -> None:
    # Backoff is 50 ms here, so only the peer's Retry-After can explain a gap of a second.
    peer = await Peer(script=[(429, {"Retry-After": "1"}, "slow down")]).start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    dispatcher = build_dispatcher(settings, "connectors:" + webhook_yaml(peer))
    try:
        await dispatcher.start()
        await produce_actions(settings, [make_action("webhook")])
        await wait_for(lambda: deliveries.where(outcome="sent"), what="sent record")
        first, second = peer.requests
        assert second.at - first.at >= 0.95
        retried = deliveries.where(outcome="retried")[0]
        assert retried["reason"] == "http_429"
        assert retried["next_attempt_ms"] - retried["at_ms"] >= 950
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await peer.stop()


async def test_dead_peer_ends_in_dead_letters_while_another_connector_keeps_delivering(
    settings: Settings,
) -> None:
    dead = await Peer(default=(503, {}, "down for maintenance")).start()
    alive = await Peer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    dead_letters = await TopicReader(settings, DEAD_LETTERS).start()
    yaml_text = "connectors:" + webhook_yaml(dead, "dead") + webhook_yaml(alive, "alive")
    dispatcher = build_dispatcher(settings, yaml_text)
    doomed = [make_action("dead") for _ in range(5)]
    fine = [make_action("alive") for _ in range(20)]
    try:
        await dispatcher.start()
        await produce_actions(
            settings, [a for pair in zip(doomed, fine, strict=False) for a in pair] + fine[5:]
        )
        # The healthy connector delivers everything while the dead one is still retrying.
        await wait_for(lambda: len(set(alive.ids())) == 20, what="all actions to the healthy peer")
        await wait_for(lambda: len(dead_letters.records) == 5, timeout_s=20, what="five dead letters")
        letters = {r["key"]: r for r in dead_letters.records}
        assert set(letters) == {a.lead_id for a in doomed}
        letter = letters[doomed[0].lead_id]
        assert letter["source"] == "dispatcher"
        assert letter["reason"] == "retries_exhausted"
        assert "http_503" in letter["detail"] and "4 attempts" in letter["detail"]
        assert len(dead.requests) == 5 * 4  # max_attempts each, then given up
        # The delivery outcome and the dead letter go to two topics: either may be read first.
        await wait_for(lambda: len(deliveries.where(outcome="failed")) == 5, what="five failed outcomes")
        assert len(alive.requests) == 20  # nothing doubled
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await dead_letters.stop()
        await dead.stop()
        await alive.stop()


async def test_malformed_records_are_dead_lettered_and_unknown_connectors_fail(settings: Settings) -> None:
    dead_letters = await TopicReader(settings, DEAD_LETTERS).start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    dispatcher = build_dispatcher(settings, "connectors:\n  log:\n    type: log\n    stdout: false\n")
    try:
        await dispatcher.start()
        good = make_action("log")
        await produce_actions(
            settings, [make_action("nowhere"), good], raw=[b"not json at all", b'{"action_id": "x"}']
        )
        await wait_for(lambda: len(dead_letters.records) == 3, what="three dead letters")
        await wait_for(lambda: deliveries.where(outcome="sent"), what="the good action")
        reasons = sorted(r["reason"] for r in dead_letters.records)
        assert reasons == ["invalid_action", "not_json", "unknown_connector"]
        unknown = next(r for r in dead_letters.records if r["reason"] == "unknown_connector")
        assert "nowhere" in unknown["detail"] and "log" in unknown["detail"]
    finally:
        await dispatcher.stop()
        await dead_letters.stop()
        await deliveries.stop()


async def test_circuit_opens_on_a_failing_peer_and_metrics_follow(settings: Settings) -> None:
    from prometheus_client import REGISTRY

    name = f"cb{settings.topic_prefix.replace('-', '')}"  # metric labels are process-wide: a unique connector
    dead = await Peer(default=(502, {}, "bad gateway")).start()
    dead_letters = await TopicReader(settings, DEAD_LETTERS).start()
    extra = (
        "    concurrency: 1\n"
        "    circuit: {failure_threshold: 2, reset_after_s: 1}\n"
        "    retry: {max_attempts: 3, base_delay_s: 0.05}\n"
    )
    dispatcher = build_dispatcher(settings, "connectors:" + webhook_yaml(dead, name, extra))
    try:
        await dispatcher.start()
        await produce_actions(settings, [make_action(name) for _ in range(6)])
        await wait_for(lambda: len(dead_letters.records) == 6, what="six dead letters")
        # Two failures opened the circuit; later attempts failed fast without reaching the peer, but for one
        # probe per reset period. Without the breaker the peer would have taken 6 x 3 = 18 requests.
        assert 2 <= len(dead.requests) <= 8
        assert REGISTRY.get_sample_value("nudge_connector_circuit_state", {"connector": name}) in (1, 2)
        assert REGISTRY.get_sample_value("nudge_actions_total", {"connector": name, "outcome": "failed"}) == 6
        assert REGISTRY.get_sample_value("nudge_connector_retries_total", {"connector": name}) == 12
        assert sum("circuit_open" in r["detail"] for r in dead_letters.records) >= 4
    finally:
        await dispatcher.stop()
        await dead_letters.stop()
        await dead.stop()


async def test_concurrency_limit_per_connector_and_a_hung_peer_does_not_stall_others(
    settings: Settings,
) -> None:
    from prometheus_client import REGISTRY

    name = f"slow{settings.topic_prefix.replace('-', '')}"
    hung = await Peer(hold=asyncio.Event()).start()
    alive = await Peer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    extra = "    concurrency: 2\n    timeout_s: 5\n"
    dispatcher = build_dispatcher(
        settings, "connectors:" + webhook_yaml(hung, name, extra) + webhook_yaml(alive)
    )
    slow = [make_action(name) for _ in range(5)]
    try:
        await dispatcher.start()
        await produce_actions(settings, slow + [make_action("webhook") for _ in range(10)])
        await wait_for(lambda: len(alive.requests) == 10, what="the healthy connector to deliver everything")
        await wait_for(lambda: len(hung.requests) == 2, what="two requests to the hung peer")
        await asyncio.sleep(0.3)  # a third concurrent request, if the limit leaked, would have arrived by now
        assert len(hung.requests) == 2
        assert REGISTRY.get_sample_value("nudge_connector_inflight", {"connector": name}) == 2
        assert hung.hold is not None
        hung.hold.set()  # the peer recovers: the rest goes through, two at a time
        await wait_for(
            lambda: len(deliveries.where(connector=name, outcome="sent")) == 5, what="slow ones sent"
        )
        assert sorted(set(hung.ids())) == sorted(a.action_id for a in slow)
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await hung.stop()
        await alive.stop()


async def test_two_dispatchers_split_the_work_and_send_each_action_once(settings: Settings) -> None:
    peer = await Peer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    first = build_dispatcher(settings, "connectors:" + webhook_yaml(peer))
    second = build_dispatcher(settings, "connectors:" + webhook_yaml(peer))
    actions = [make_action("webhook") for _ in range(40)]
    try:
        await first.start()
        await produce_actions(settings, actions[:20])
        await second.start()  # joins mid-stream: a rebalance while actions are in flight
        await wait_for(
            lambda: (
                bool(first.consumer and first.consumer.assignment())
                and bool(second.consumer and second.consumer.assignment())
            ),
            what="both dispatchers to own partitions",
        )
        await produce_actions(settings, actions[20:])
        await wait_for(lambda: len(set(peer.ids())) == 40, timeout_s=30, what="all forty actions")
        await asyncio.sleep(0.5)  # a late double send would land here
        assert sorted(peer.ids()) == sorted(a.action_id for a in actions)
        assert len(deliveries.where(outcome="sent")) == 40
        from prometheus_client import REGISTRY

        topic = settings.topic("actions")
        await wait_for(
            lambda: first.tracker.committed_offsets() or second.tracker.committed_offsets(), what="commits"
        )
        lags = [
            REGISTRY.get_sample_value("nudge_consumer_lag_messages", {"topic": topic, "partition": str(p)})
            for p in range(settings.partitions)
        ]
        assert any(lag is not None for lag in lags)
    finally:
        await first.stop()
        await second.stop()
        await deliveries.stop()
        await peer.stop()
