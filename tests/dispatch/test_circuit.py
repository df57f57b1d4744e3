"""What the circuit breaker counts, end to end: only failures of the peer, never an action that cannot be built."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from engine.config import Settings
from engine.dispatch.policies.circuit import CircuitState
from engine.testing import wait_until
from tests.connectors.helpers import make_action
from tests.connectors.smtp_peer import SmtpPeer
from tests.dispatch.rig import DispatchRig

pytestmark = pytest.mark.integration


def lead(n: int, name: str) -> dict[str, object]:
    return {"traits": {"email": f"lead{n}@example.com", "name": name, "timezone": "UTC"}}


async def test_leads_whose_name_breaks_a_header_fail_alone_and_do_not_open_the_breaker(
    settings: Settings, rig: DispatchRig, smtp_inbox: SmtpPeer
) -> None:
    name = f"mail{settings.topic_prefix.replace('-', '')}"  # metric labels are process-wide: a unique connector
    dispatcher = await rig.start_dispatcher(
        f"connectors:\n  {name}:\n    type: email\n    host: 127.0.0.1\n    port: {smtp_inbox.port}\n"
        "    security: none\n    timeout_s: 10\n    circuit: {failure_threshold: 5, reset_after_s: 30}\n"
    )
    bad = [make_action(name, context=lead(n, f"Eve {n}\r\nBcc: victim{n}@example.com")) for n in range(5)]
    good = [make_action(name, context=lead(100 + n, f"Ada {n}")) for n in range(10)]
    # The bad ones first: before the fix, five failures in a row opened the breaker for everyone.
    await rig.produce(bad + good)
    await wait_until(lambda: len(smtp_inbox.messages) >= len(good), timeout_s=20, what="every good lead's mail")
    await wait_until(lambda: len(rig.dead_letters.docs()) == len(bad), what="a dead letter per bad lead")
    assert {r["reason"] for r in rig.dead_letters.docs()} == {"bad_message"}
    assert {r["key"] for r in rig.dead_letters.docs()} == {a.lead_id for a in bad}
    # The deliveries topic is read by its own consumer: it may trail the dead letters a moment.
    await wait_until(lambda: len(rig.deliveries.where(outcome="failed")) >= len(bad), what="a failed outcome each")
    failed = rig.deliveries.where(outcome="failed")
    assert sorted(r["action_id"] for r in failed) == sorted(a.action_id for a in bad)
    assert {r["attempt"] for r in failed} == {0}  # nothing went to the peer for them
    assert not [r for r in rig.deliveries.docs() if r["reason"] == "circuit_open"]
    assert dispatcher.runtimes[name].breaker.state is CircuitState.CLOSED
    assert REGISTRY.get_sample_value("nudge_connector_circuit_state", {"connector": name}) == 0
    assert sorted(m["X-Nudge-Action-Id"] for m in smtp_inbox.messages) == sorted(a.action_id for a in good)
    assert not any("victim" in str(m) for m in smtp_inbox.messages)


async def test_open_circuit_refusals_spend_no_attempt_and_only_real_attempts_reach_the_peer(
    settings: Settings, rig: DispatchRig
) -> None:
    name = f"cb{settings.topic_prefix.replace('-', '')}"
    dead = await rig.peer(default=(502, {}, "bad gateway"))
    await rig.start_dispatcher(
        f"connectors:\n  {name}:\n    type: webhook\n    url: {dead.url}/hook\n    concurrency: 1\n"
        "    circuit: {failure_threshold: 2, reset_after_s: 0.3}\n    retry: {max_attempts: 2, base_delay_s: 0.05}\n"
    )
    actions = [make_action(name) for _ in range(4)]
    await rig.produce(actions)
    await wait_until(lambda: len(rig.dead_letters.docs()) == 4, what="four dead letters")
    # Each action had exactly its two real attempts: the refusals in between reached nobody and spent nothing.
    assert sorted(dead.ids()) == sorted(a.action_id for a in actions for _ in range(2))
    refused = [r for r in rig.deliveries.where(outcome="deferred") if r["reason"] == "circuit_open"]
    assert refused and all(r["attempt"] in (0, 1) for r in refused)
    assert {r["reason"] for r in rig.dead_letters.docs()} == {"retries_exhausted"}
    assert all("2 attempts; last error http_502" in r["detail"] for r in rig.dead_letters.docs())
    assert REGISTRY.get_sample_value("nudge_connector_circuit_state", {"connector": name}) in (1, 2)
    failed = {"connector": name, "outcome": "failed", "reason": "retries_exhausted"}
    assert REGISTRY.get_sample_value("nudge_actions_total", failed) == 4
    assert REGISTRY.get_sample_value("nudge_connector_retries_total", {"connector": name}) == 4
