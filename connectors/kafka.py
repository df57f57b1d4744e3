"""`kafka`: produce the action to a topic of the user's choosing, for downstream systems.

Contract:
- Record: key = lead id (so one lead's actions stay in order on one partition), value = `Action.to_bytes()`,
  headers `action_id` and `rule`. Returns once the broker acknowledged (acks=all).
- `bootstrap` defaults to the engine's own broker (`NUDGE_BROKER_URL`); `topic` is used as written (no
  prefix).
- Broker errors are retryable (the producer's own retries run first); an oversized record is permanent.
"""

from __future__ import annotations

from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from pydantic import Field

from connectors.base import Connector, ConnectorConfig, ConnectorEnv, PermanentError, RetryableError
from engine.core.model import Action
from engine.kafka.security import client_options


class KafkaConfig(ConnectorConfig):
    """Options of a `kafka` connector."""

    type: str = "kafka"
    topic: str = Field(min_length=1)
    bootstrap: str | None = Field(None, description="host:port[,host:port]; default: the engine's broker")
    linger_ms: int = Field(5, ge=0)


class KafkaMessage(NamedTuple):
    """One record, ready to produce."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class KafkaConnector(Connector[KafkaMessage]):
    """One producer per connector, started with the dispatcher; acks=all."""

    kind = "kafka"
    config_model = KafkaConfig
    config: KafkaConfig

    def __init__(self, name: str, config: KafkaConfig, env: ConnectorEnv) -> None:
        super().__init__(name, config, env)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        bootstrap = self.config.bootstrap or self.env.settings.bootstrap_servers
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=self.config.linger_ms,
            request_timeout_ms=int(self.config.timeout_s * 1000),
            **(client_options(self.env.settings) if self.config.bootstrap is None else {}),
        )
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def build(self, action: Action) -> KafkaMessage:
        headers = [("action_id", action.action_id.encode()), ("rule", action.rule.encode())]
        return KafkaMessage(action.lead_id.encode(), action.to_bytes(), headers)

    async def transmit(self, message: KafkaMessage) -> None:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        try:
            await self._producer.send_and_wait(
                self.config.topic, message.value, key=message.key, headers=message.headers
            )
        except MessageSizeTooLargeError:
            raise PermanentError(
                "message_too_large", "the action is larger than the broker accepts"
            ) from None
        except KafkaError as exc:
            raise RetryableError("broker_error", type(exc).__name__) from None
