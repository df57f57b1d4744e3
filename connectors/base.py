"""The connector contract: what the dispatcher asks of every connector (`Connector`: build a message, then transmit
it), and how a connector reports a failure (`DeliveryError` and its kinds)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.core.model import Action

if TYPE_CHECKING:
    from connectors.rendering import Renderer
    from engine.config import Settings


def is_dev_profile(profile: str | None) -> bool:
    """`NUDGE_BROKER_PROFILE` of the dev stack (`dev`; `dev-batched` for the demo): the one place where short or
    missing signing secrets are accepted."""
    return profile in ("dev", "dev-batched")


class DeliveryError(Exception):
    """A failed delivery. `reason`: bounded code (`http_503`, `timeout`); `detail`: human text, no secrets."""

    retryable: ClassVar[bool] = True

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryableError(DeliveryError):
    """The peer or the way to it failed and may accept later (timeout, connection refused, 5xx, 429, SMTP 4xx):
    the only kind of failure a circuit breaker counts. `retry_after_s`: the peer's Retry-After, honoured as a
    minimum."""

    def __init__(self, reason: str, detail: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after_s = retry_after_s


class PermanentError(DeliveryError):
    """The peer will never accept this action as it is (bad request, unknown recipient, a template that fails):
    dead-letter it. Says nothing about the peer's health."""

    retryable = False


class BadMessage(PermanentError):
    """The action cannot be turned into a message for this peer (a value the protocol refuses, such as CR/LF in
    a mail header): permanent for this action only, never a sign that the peer is down."""

    def __init__(self, detail: str = "", reason: str = "bad_message") -> None:
        super().__init__(reason, detail)


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


MessageT = TypeVar("MessageT")


class Connector(ABC, Generic[MessageT]):
    """Delivers one `Action` to one kind of peer (HTTP endpoint, Slack, SMTP server, Kafka topic, Redis
    stream, CRM) in two steps, so a failure says whose fault it is. Subclasses set `kind` and `config_model`
    and implement `build` and `transmit`.

    - `build(action) -> message`: everything that depends only on the action and the options (rendering,
      recipient, headers, serialisation). Synchronous, no I/O, no waiting. Raises `SkipDelivery` (nothing to send
      for this lead, e.g. no email address: recorded as suppressed), `BadMessage` / `PermanentError` (this action
      can never become a valid message: a header the protocol refuses, a template that fails); any other
      exception is taken as `BadMessage` too. Build failures are permanent for that one action and never reach
      the circuit breaker: they say nothing about the peer.
    - `transmit(message)` returns when the peer has ACCEPTED it (HTTP 2xx, SMTP 250 after DATA, broker ack, XADD
      reply). It never retries by itself: retries, backoff, idempotency, caps and circuit breaking are the
      dispatcher's (`engine.dispatch`), configured beside the connector's own options in the connectors file.
      It raises `RetryableError` for a failure of the peer or the way to it (timeout, connection error, 5xx, 429
      with an optional `retry_after_s`, SMTP 4xx): only these count towards the circuit breaker; and
      `PermanentError` when the peer refuses this message for good (4xx, unknown mailbox, SMTP 5xx). Any other
      exception is a connector bug: retried, not counted by the breaker.
    - `send(action)` is `transmit(build(action))`, for callers outside the dispatcher.
    - The message carries `action.action_id` (HTTP `Idempotency-Key` / `X-Nudge-Action-Id`, email `Message-ID`,
      Kafka header, stream field) so a peer can drop a second copy after a crash between send and mark.
    - `reason` is a short code from a bounded set (used as a metric label); `detail` is for humans. Neither may
      contain a secret; the dispatcher redacts them again anyway.
    - `transmit` may be called concurrently up to the connector's `concurrency`; `start()` opens pooled clients,
      `close()` releases them. A connector holds no per-lead state.
    """

    kind: ClassVar[str]
    config_model: ClassVar[type[ConnectorConfig]] = ConnectorConfig
    # Whether marketing actions through this connector obey consent unless the connectors file says otherwise.
    consent_by_default: ClassVar[bool] = False
    # Which templates an action's `template` names (`rendering.TEMPLATE_FILES`: "email", "slack"); None: this
    # type renders no template, and any name is ignored.
    template_family: ClassVar[str | None] = None
    # Options holding signing keys: outside the dev profile, at least 32 bytes when set (checked at load time).
    signing_secrets: ClassVar[tuple[str, ...]] = ()
    # Whether marketing actions to one recipient address get the default per-recipient cap
    # (`policies.default_recipient_cap`): connectors that write to an address the lead gave.
    recipient_capped_by_default: ClassVar[bool] = False

    @classmethod
    def startup_problems(cls, name: str, config: ConnectorConfig, settings: Settings) -> list[str]:
        """What keeps this connector from starting with these settings (e.g. a missing secret outside the dev
        profile), one message each; the dispatcher refuses to start on any. No I/O."""
        return []

    def __init__(self, name: str, config: ConnectorConfig, env: ConnectorEnv) -> None:
        self.name = name
        self.config = config
        self.env = env

    async def start(self) -> None:
        """Open pooled clients; called once before the first send."""

    async def close(self) -> None:
        """Release clients; no send is in flight when it is called."""

    @abstractmethod
    def build(self, action: Action) -> MessageT:
        """The message for `action`; raises `SkipDelivery` or `BadMessage`/`PermanentError` (class docstring)."""

    @abstractmethod
    async def transmit(self, message: MessageT) -> None:
        """Hand `message` to the peer; return when it accepted it, raise a `DeliveryError` otherwise."""

    def recipient_address(self, action: Action) -> str | None:
        """The address `action` would be sent to, for the per-recipient frequency caps (`scope: recipient`);
        None for connectors without one (the default). Pure, never raises."""
        return None

    async def send(self, action: Action) -> None:
        """Build and transmit `action` (what the dispatcher does in two steps)."""
        await self.transmit(self.build(action))
