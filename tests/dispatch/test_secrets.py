"""Secrets never reach logs, delivery records or dead letters, even when a peer echoes them back."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from engine.testing import Answer, PeerRequest, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig

pytestmark = pytest.mark.integration

SECRETS = {
    "NUDGE_WEBHOOK_SECRET": "whsec-Sup3rSecret-0001",
    "NUDGE_API_KEY": "apikey-Sup3rSecret-0002",
    "NUDGE_SLACK_TOKEN": "slackSup3rSecret0003",
    "NUDGE_CRM_TOKEN": "crm-Sup3rSecret-0004",
}


def echo_credentials(request: web.Request, _: PeerRequest) -> Answer:
    """A badly behaved peer: its error body repeats the request's credentials and URL."""
    echoed = f"denied {request.url} auth={request.headers.get('Authorization')} key={request.headers}"
    return 401 if "crm" in request.path else 500, {}, echoed


async def test_secrets_stay_out_of_logs_records_and_dead_letters(
    rig: DispatchRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = await rig.peer(respond=echo_credentials)
    yaml_text = f"""
connectors:
  webhook:
    type: webhook
    url: {peer.url}/hook
    secret: ${{NUDGE_WEBHOOK_SECRET}}
    headers: {{X-Api-Key: "${{NUDGE_API_KEY}}"}}
    retry: {{max_attempts: 2, base_delay_s: 0.01}}
  slack:
    type: slack
    webhook_url: {peer.url}/services/T0/B0/${{NUDGE_SLACK_TOKEN}}
    retry: {{max_attempts: 2, base_delay_s: 0.01}}
  crm:
    type: crm
    base_url: {peer.url}/crm
    token: ${{NUDGE_CRM_TOKEN}}
"""
    dispatcher = await rig.start_dispatcher(yaml_text, env=SECRETS)
    await rig.produce([make_action(c) for c in ("webhook", "slack", "crm")])
    await wait_until(lambda: len(rig.dead_letters.records) == 3, what="three dead letters")
    await dispatcher.stop()  # its shutdown logs are checked too
    # The peer really got (and echoed) the secrets, so redaction is what kept them out.
    assert any(SECRETS["NUDGE_CRM_TOKEN"] in r.headers.get("Authorization", "") for r in peer.requests)
    letters = b"\n".join(r.value for r in rig.dead_letters.records)
    assert b"***" in letters
    for secret in SECRETS.values():
        assert secret not in caplog.text
        assert secret.encode() not in b"\n".join(r.value for r in rig.deliveries.records)
        assert secret.encode() not in letters
