"""`webhook`: POST the action as JSON to a URL, signed with HMAC-SHA256; `verify_signature` for receivers."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, ClassVar

from pydantic import AnyHttpUrl, Field, SecretStr

from connectors.base import ConnectorConfig, is_dev_profile
from connectors.http import HttpConnector
from engine.core.model import Action

if TYPE_CHECKING:
    from engine.config import Settings

SIGNATURE_HEADER = "X-Nudge-Signature"
TIMESTAMP_HEADER = "X-Nudge-Timestamp"
DEFAULT_TOLERANCE_S = 300


class WebhookConfig(ConnectorConfig):
    """Options of a `webhook` connector; `secret` and header values are secrets."""

    type: str = "webhook"
    url: AnyHttpUrl
    secret: SecretStr | None = Field(None, description="HMAC key; receivers verify X-Nudge-Signature with it")
    headers: dict[str, SecretStr] = Field(default_factory=dict)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now_s: float | None = None,
) -> bool:
    """Receiver side: True when the signature matches and the timestamp is inside the replay window."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - sent_at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookConnector(HttpConnector[tuple[bytes, dict[str, str]]]):
    """POSTs the signed action; success is any 2xx, errors follow `HttpClient.request` (429/5xx retry,
    other 4xx permanent).

    - Body: `Action.to_json()` (sorted keys), `Content-Type: application/json`.
    - Headers: `Idempotency-Key` and `X-Nudge-Action-Id` (the action id: dedupe on it), `X-Nudge-Timestamp` (Unix
      seconds), and when a `secret` is set `X-Nudge-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`;
      plus the configured `headers` (values are treated as secrets: never logged).
    - A receiver verifies with `verify_signature()` and rejects timestamps older than its replay window (default
      300 s).
    """

    kind = "webhook"
    config_model = WebhookConfig
    signing_secrets: ClassVar[tuple[str, ...]] = ("secret",)
    config: WebhookConfig

    @classmethod
    def startup_problems(cls, name: str, config: ConnectorConfig, settings: Settings) -> list[str]:
        """Outside the dev profile a webhook must be signed: the signature is its receiver's only proof that a
        request comes from Nudge."""
        assert isinstance(config, WebhookConfig)
        if is_dev_profile(settings.broker_profile) or config.secret is not None:
            return []
        return [
            f"connectors.{name}.secret is empty: an unsigned webhook is refused outside the dev profile (set "
            "NUDGE_WEBHOOK_SECRET, 32+ bytes: openssl rand -hex 32)"
        ]

    def build(self, action: Action, now_s: float | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers, signed for now (`now_s`: tests)."""
        body = action.to_bytes()
        timestamp = str(int(time.time() if now_s is None else now_s))
        headers = {k: v.get_secret_value() for k, v in self.config.headers.items()}
        headers.update(
            {
                "Idempotency-Key": action.action_id,
                "X-Nudge-Action-Id": action.action_id,
                TIMESTAMP_HEADER: timestamp,
            }
        )
        if self.config.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.config.secret.get_secret_value(), timestamp, body)
        return body, headers

    async def transmit(self, message: tuple[bytes, dict[str, str]]) -> None:
        body, headers = message
        await self.http.post_json(str(self.config.url), body, headers)
