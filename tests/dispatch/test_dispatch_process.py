"""`nudge dispatch` as a real process, SIGKILLed while the peer is receiving an action, then restarted.

This is the crash between send and mark with nothing simulated: the peer got the action, the process died
before it could mark the claim done or commit the offset. The restarted process redelivers it with the same id
after the claim expires: twice to the wire, once to a peer that dedupes by `X-Nudge-Action-Id`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.config import Settings
from engine.testing import ChildProcess, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig, process_env

pytestmark = pytest.mark.integration


def dispatch_process(settings: Settings, connectors: Path, log: Path) -> ChildProcess:
    env = process_env(settings, NUDGE_CONNECTORS_PATH=str(connectors))
    return ChildProcess.nudge("nudge dispatch", ["dispatch", "--metrics-port", "0"], env, log)


async def test_sigkill_mid_send_then_restart(settings: Settings, rig: DispatchRig, tmp_path: Path) -> None:
    peer = await rig.peer(hold=asyncio.Event())
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        f"""
connectors:
  webhook: {{type: webhook, url: "{peer.url}/hook", timeout_s: 2}}
policies:
  idempotency: {{claim_ttl_s: 4}}
dispatcher: {{session_timeout_ms: 2000, schedule_poll_s: 0.05}}
"""
    )
    action = make_action("webhook")
    with dispatch_process(settings, connectors, tmp_path / "dispatch.log") as dispatcher:
        dispatcher.start()
        await rig.produce([action])
        await asyncio.wait_for(peer.arrived.wait(), 30)
        dispatcher.kill()
        assert peer.hold is not None
        peer.hold.set()  # the held request now answers into a dead socket
        peer.hold = None
        dispatcher.start()
        await wait_until(lambda: rig.deliveries.where(outcome="sent"), timeout_s=30, what="delivery after restart")
        assert peer.ids() == [action.action_id, action.action_id]
        assert len(set(peer.ids())) == 1
        assert dispatcher.stop() == 0, dispatcher.log_tail(2000)
        assert len(rig.deliveries.where(outcome="sent")) == 1
