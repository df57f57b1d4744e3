"""Secrets never reach logs, delivery records or dead letters, even when a peer echoes them back."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

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

SECRETS = {
    "NUDGE_WEBHOOK_SECRET": "whsec-Sup3rSecret-0001",
    "NUDGE_API_KEY": "apikey-Sup3rSecret-0002",
    "NUDGE_SLACK_TOKEN": "slackSup3rSecret0003",
    "NUDGE_CRM_TOKEN": "crm-Sup3rSecret-0004",
}


class EchoPeer(Peer):
    """A badly behaved peer: its error body repeats the request's credentials and URL."""

    async def _handle(self, request: web.Request) -> web.Response:
        await super()._handle(request)
        echoed = f"denied {request.url} auth={request.headers.get('Authorization')} key={request.headers}"
        return web.Response(status=401 if "crm" in request.path else 500, text=echoed)


async def test_secrets_stay_out_of_logs_records_and_dead_letters(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = await EchoPeer().start()
    deliveries = await TopicReader(settings, DELIVERIES).start()
    dead_letters = await TopicReader(settings, DEAD_LETTERS).start()
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
    dispatcher = build_dispatcher(settings, yaml_text, env=SECRETS)
    try:
        await dispatcher.start()
        await produce_actions(settings, [make_action(c) for c in ("webhook", "slack", "crm")])
        await wait_for(lambda: len(dead_letters.records) == 3, what="three dead letters")
    finally:
        await dispatcher.stop()
        await deliveries.stop()
        await dead_letters.stop()
        await peer.stop()
    # The peer really got (and echoed) the secrets, so redaction is what kept them out.
    assert any(SECRETS["NUDGE_CRM_TOKEN"] in r.headers.get("Authorization", "") for r in peer.requests)
    letters = b"\n".join(dead_letters.raw)
    assert b"***" in letters
    for secret in SECRETS.values():
        assert secret not in caplog.text
        assert secret.encode() not in b"\n".join(deliveries.raw)
        assert secret.encode() not in letters
