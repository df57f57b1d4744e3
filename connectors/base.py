"""The connector contract: what the dispatcher asks of every connector (`Connector`), and how a connector reports
a failure (`DeliveryError` and its kinds)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.core.model import Action

if TYPE_CHECKING:
    from connectors.rendering import Renderer
    from engine.config import Settings


class DeliveryError(Exception):
    """A failed send. `reason`: bounded code (`http_503`, `timeout`); `detail`: human text, no secrets."""

    retryable: ClassVar[bool] = True

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryableError(DeliveryError):
    """The peer may accept later. `retry_after_s`: the peer's Retry-After, honoured as a minimum."""

    def __init__(self, reason: str, detail: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after_s = retry_after_s


class PermanentError(DeliveryError):
    """The peer will never accept this action as it is (bad request, unknown recipient): dead-letter."""

    retryable = False


class SkipDelivery(DeliveryError):
    """Nothing to send for this lead (e.g. no email address): recorded as `suppressed` with the reason."""

    retryable = False


class ConnectorConfig(BaseModel):
    """Options every connector has; each connector module extends it with its own fields."""

    model_config = ConfigDict(extra="forbid")

    type: str
    concurrency: int = Field(8, ge=1, description="sends in flight at once to this peer")
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: Any) -> Any:
        # `${NUDGE_SMTP_PASSWORD:-}` with the variable unset gives "": treat it as not configured.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != ""}
        return data

    def secret_values(self) -> list[str]:
        """Every secret in this config (SecretStr fields, at any depth), for the redactor."""
        return list(_secrets_in(self))


def _secrets_in(value: Any) -> list[str]:
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in _secrets_in(getattr(value, name))]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _secrets_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secrets_in(v)]
    return []


@dataclass(frozen=True)
class ConnectorEnv:
    """What a connector may use from its surroundings: settings (broker, Redis) and the template renderer."""

    settings: Settings
    renderer: Renderer


class Connector(ABC):
    """Delivers one `Action` to one kind of peer (HTTP endpoint, Slack, SMTP server, Kafka topic, Redis
    stream, CRM). Subclasses set `kind` and `config_model` and implement `send`.

    - `send(action)` returns when the peer has ACCEPTED the action (HTTP 2xx, SMTP 250 after DATA, broker ack, XADD
      reply). It never retries by itself: retries, backoff, idempotency, caps and circuit breaking are the
      dispatcher's (`engine.dispatch`), configured beside the connector's own options in the connectors file.
    - It passes `action.action_id` to the peer (HTTP `Idempotency-Key` / `X-Nudge-Action-Id`, email `Message-ID`,
      Kafka header, stream field) so a peer can drop a second copy after a crash between send and mark.
    - Failures are raised as `RetryableError` (may work later: timeouts, 5xx, 429 with optional `retry_after_s`,
      SMTP 4xx), `PermanentError` (will never work: 4xx, bad address, SMTP 5xx), or `SkipDelivery` (nothing to send
      for this lead, e.g. no email address: recorded as suppressed). Any other exception is treated as retryable.
    - `reason` is a short code from a bounded set (used as a metric label); `detail` is for humans. Neither may
      contain a secret; the dispatcher redacts them again anyway.
    - `send` may be called concurrently up to the connector's `concurrency`; `start()` opens pooled clients,
      `close()` releases them. A connector holds no per-lead state.
    """

    kind: ClassVar[str]
    config_model: ClassVar[type[ConnectorConfig]] = ConnectorConfig
    # Whether marketing actions through this connector obey consent unless the connectors file says otherwise.
    consent_by_default: ClassVar[bool] = False

    def __init__(self, name: str, config: ConnectorConfig, env: ConnectorEnv) -> None:
        self.name = name
        self.config = config
        self.env = env

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pooled clients; called once before the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients; no send is in flight when it is called."""

    @abstractmethod
    async def send(self, action: Action) -> None:
        """Deliver `action`; return when the peer accepted it, raise a `DeliveryError` otherwise."""
