"""`nudge dispatch` as a real process, SIGKILLed while the peer is receiving an action, then restarted.

This is the crash between send and mark with nothing simulated: the peer got the action, the process died
before it could mark the claim done or commit the offset. The restarted process redelivers it with the same id
after the claim expires: twice to the wire, once to a peer that dedupes by `X-Nudge-Action-Id`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import Settings
from engine.kafka.topics import DELIVERIES
from tests.connectors.helpers import Peer, TopicReader, make_action, produce_actions, wait_for

pytestmark = pytest.mark.integration


def start_dispatcher(settings: Settings, connectors: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NUDGE_BROKER_URL": settings.broker_url,
        "NUDGE_BROKER_PROFILE": "dev",
        "NUDGE_REDIS_URL": settings.redis_url,
        "NUDGE_APP_ID": settings.app_id,
        "NUDGE_TOPIC_PREFIX": settings.topic_prefix,
        "NUDGE_CONNECTORS_PATH": str(connectors),
        "NUDGE_LOG_LEVEL": "info",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "dispatch", "--metrics-port", "0"],
            env=env,
            stdout=out,
            stderr=out,
        )


async def test_sigkill_mid_send_then_restart(settings: Settings, tmp_path: Path) -> None:
    peer = await Peer(hold=asyncio.Event()).start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
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
    log = tmp_path / "dispatch.log"
    action = make_action("webhook")
    first = start_dispatcher(settings, connectors, log)
    second = None
    try:
        await produce_actions(settings, [action])
        await asyncio.wait_for(peer.arrived.wait(), 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert peer.hold is not None
        peer.hold.set()  # the held request now answers into a dead socket
        peer.hold = None
        second = start_dispatcher(settings, connectors, log)
        await wait_for(lambda: deliveries.where(outcome="sent"), timeout_s=30, what="delivery after restart")
        assert peer.ids() == [action.action_id, action.action_id]
        assert len(set(peer.ids())) == 1
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0, log.read_text()[-2000:]
        assert len(deliveries.where(outcome="sent")) == 1
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        await deliveries.stop()
        await peer.stop()
