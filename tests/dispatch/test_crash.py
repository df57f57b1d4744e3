"""Crash consistency: the dispatcher dies between claim and send, or between send and mark, and is restarted.

The crash is a `kill()`: tasks cancelled mid-flight, no offset committed, the Redis claim left to expire, like
a SIGKILL (tests/dispatch/test_dispatch_process.py does it with a real SIGKILL). The restarted dispatcher
gets the uncommitted action again from Kafka.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.core.model import Action
from engine.dispatch.delivery import DeliveryHooks
from engine.testing import RecordingPeer, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig

pytestmark = pytest.mark.integration

CLAIM_TTL_S = 7
CLAIM_TTL = f"policies:\n  idempotency: {{claim_ttl_s: {CLAIM_TTL_S}}}\n"


def config(peer: RecordingPeer) -> str:
    return f"connectors:\n  webhook:\n    type: webhook\n    url: {peer.url}/hook\n{CLAIM_TTL}"


def crash_at(point: str, reached: asyncio.Event) -> DeliveryHooks:
    async def hang(_action: Action) -> None:
        reached.set()
        await asyncio.Event().wait()  # frozen until killed

    return DeliveryHooks(**{point: hang})


@pytest.mark.parametrize("point", ["after_claim", "after_send"])
async def test_killed_dispatcher_restarts_and_delivers_once_per_id(rig: DispatchRig, point: str) -> None:
    peer = await rig.peer()
    reached = asyncio.Event()
    first = await rig.start_dispatcher(config(peer), hooks=crash_at(point, reached))
    action = make_action("webhook")
    await rig.produce([action])
    await asyncio.wait_for(reached.wait(), 15)
    killed_at = time.monotonic()
    await first.kill()
    await rig.start_dispatcher(config(peer))
    restart_s = time.monotonic() - killed_at
    deliveries = rig.deliveries
    await wait_until(lambda: deliveries.where(outcome="sent"), what="delivery after restart")
    if restart_s < CLAIM_TTL_S - 1:
        # The restarted dispatcher found the dead claim, waited for it to expire, then claimed and sent.
        assert [r["reason"] for r in deliveries.where(outcome="deferred")] == ["claim_held"]
    if point == "after_claim":
        assert peer.ids() == [action.action_id]  # exactly once, even to a peer that does not dedupe
    else:
        # Sent before the crash and again after: a deduping peer sees it once; never more than twice.
        assert peer.ids() == [action.action_id, action.action_id]
        assert len(set(peer.ids())) == 1
    assert len(deliveries.where(outcome="sent")) == 1
    await asyncio.sleep(0.5)  # a late duplicate would show up here
    assert len(peer.requests) <= 2


async def test_a_stop_that_cancels_an_unfinished_action_does_not_commit_past_it(rig: DispatchRig) -> None:
    # stop() waits `grace_s` (2 s here) for actions in flight, then cancels them and commits what is safe. The
    # cancelled action has no outcome: its offset must stay uncommitted, or the restart would skip it for good.
    peer = await rig.peer()
    reached = asyncio.Event()
    first = await rig.start_dispatcher(config(peer), hooks=crash_at("after_claim", reached))
    action = make_action("webhook")
    await rig.produce([action])
    await asyncio.wait_for(reached.wait(), 15)
    await first.stop()
    await rig.start_dispatcher(config(peer))
    await wait_until(lambda: rig.deliveries.where(outcome="sent"), timeout_s=20, what="delivery after the restart")
    assert peer.ids() == [action.action_id]
