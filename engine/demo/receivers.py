"""The peers the demo's connectors deliver to, on loopback: one HTTP server (webhook at `/nudge`, Slack's
incoming-webhook format at `/slack`, a CRM API under `/crm/`) and a real SMTP server (aiosmtpd) for email.

Contract: `Receivers.start()` binds free ports and returns the NUDGE_* variables that point
`examples/connectors.yaml` at them; every accepted delivery is counted per channel and passed to `on_delivery`
(channel, short description) for the live output. HTTP (an `engine.testing.RecordingPeer`) answers 200 with a
small JSON body (Slack: `ok`, as Slack does); SMTP accepts every message. `stop()` closes both servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from engine.devstack import free_port
from engine.testing import PeerRequest, RecordingPeer

OnDelivery = Callable[[str, str], None]


class _SmtpHandler:
    def __init__(self, receivers: Receivers) -> None:
        self.receivers = receivers

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        to = ", ".join(envelope.rcpt_tos)
        self.receivers.record("email", f"to {to}: {message.get('Subject', '(no subject)')}")
        return "250 Message accepted for delivery"


class Receivers:
    """Loopback HTTP + SMTP peers for the demo; see the module docstring."""

    def __init__(self, on_delivery: OnDelivery | None = None) -> None:
        self.on_delivery = on_delivery
        self.counts: Counter[str] = Counter()
        self._http = RecordingPeer(respond=self._answer)
        self._smtp: Any = None  # aiosmtpd Controller
        self.smtp_port = 0

    @property
    def http_port(self) -> int:
        return self._http.port

    def record(self, channel: str, what: str) -> None:
        self.counts[channel] += 1
        if self.on_delivery is not None:
            self.on_delivery(channel, what)

    def _answer(self, request: web.Request, recorded: PeerRequest) -> web.StreamResponse:
        doc: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = recorded.json() if recorded.body else None
        path = recorded.path
        if path.startswith("/slack"):
            text = doc.get("text", "") if isinstance(doc, dict) else ""
            self.record("slack", text[:100])
            return web.Response(text="ok")
        if path.startswith("/crm"):
            self.record("crm", f"{request.method} {path}")
            return web.json_response({"id": f"crm-{self.counts['crm']}", "ok": True})
        lead = doc.get("lead_id", "?") if isinstance(doc, dict) else "?"
        rule = doc.get("rule", "?") if isinstance(doc, dict) else "?"
        self.record("webhook", f"{rule} for {lead}")
        return web.json_response({"ok": True})

    async def start(self) -> dict[str, str]:
        await self._http.start()
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            raise RuntimeError(
                "the demo's SMTP receiver needs aiosmtpd, a development dependency: pip install -e '.[dev]'"
            ) from None
        self.smtp_port = free_port()
        self._smtp = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=self.smtp_port)
        await asyncio.to_thread(self._smtp.start)
        base = self._http.url
        return {
            "NUDGE_WEBHOOK_URL": f"{base}/nudge",
            "NUDGE_SLACK_WEBHOOK_URL": f"{base}/slack",
            "NUDGE_CRM_URL": f"{base}/crm",
            "NUDGE_SMTP_HOST": "127.0.0.1",
            "NUDGE_SMTP_PORT": str(self.smtp_port),
        }

    async def stop(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._smtp.stop)
            self._smtp = None
        await self._http.stop()
