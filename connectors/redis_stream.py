"""`redis` (connector type): XADD the action to a Redis stream, for apps that react in real time.

Contract:
- Entry fields: `action_id`, `lead_id`, `rule`, `connector`, `fired_at_ms`, `payload` (JSON) and `action` (the
  full `Action.to_json()` as JSON). Consumers dedupe on `action_id` (a crash between XADD and the dispatcher's
  mark can add a second entry with the same id).
- `maxlen` trims the stream approximately (`MAXLEN ~`), so it cannot grow without bound.
- `url` defaults to the engine's Redis (`NUDGE_REDIS_URL`); it may hold a password, so it is a secret.
- Connection problems are retryable; a command error (e.g. wrong key type) is permanent.
"""

from __future__ import annotations

import orjson
from pydantic import Field, SecretStr
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from connectors.base import Connector, ConnectorConfig, ConnectorEnv, PermanentError, RetryableError
from engine.core.model import Action


class RedisStreamConfig(ConnectorConfig):
    """Options of a `redis` connector; `url` is a secret (it can hold a password)."""

    type: str = "redis"
    stream: str = Field("nudge:actions", min_length=1)
    url: SecretStr | None = Field(None, description="default: NUDGE_REDIS_URL")
    maxlen: int | None = Field(100_000, ge=1)


def stream_fields(action: Action) -> dict[str, str | bytes]:
    return {
        "action_id": action.action_id,
        "lead_id": action.lead_id,
        "rule": action.rule,
        "connector": action.connector,
        "fired_at_ms": str(action.fired_at_ms),
        "payload": orjson.dumps(action.payload),
        "action": action.to_bytes(),
    }


class RedisStreamConnector(Connector[dict[str, str | bytes]]):
    """XADDs one entry per action to the configured stream."""

    kind = "redis"
    config_model = RedisStreamConfig
    config: RedisStreamConfig

    def __init__(self, name: str, config: RedisStreamConfig, env: ConnectorEnv) -> None:
        super().__init__(name, config, env)
        self._redis: Redis | None = None

    async def start(self) -> None:
        url = self.config.url.get_secret_value() if self.config.url else self.env.settings.redis_url
        self._redis = Redis.from_url(url, socket_timeout=self.config.timeout_s)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def build(self, action: Action) -> dict[str, str | bytes]:
        return stream_fields(action)

    async def transmit(self, message: dict[str, str | bytes]) -> None:
        if self._redis is None:
            await self.start()
        assert self._redis is not None
        try:
            await self._redis.xadd(
                self.config.stream,
                message,  # type: ignore[arg-type]  # redis-py's field type is invariant
                maxlen=self.config.maxlen,
                approximate=True,
            )
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise RetryableError("connection_error", type(exc).__name__) from None
        except redis_errors.ResponseError as exc:
            raise PermanentError("redis_error", str(exc)[:200]) from None
