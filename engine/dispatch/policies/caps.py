"""Frequency caps across rules: at most `max` messages to one lead (or to one recipient address, whatever lead id
it comes through) through one connector (or all) per period."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from redis.asyncio import Redis

from engine.core.model import Action

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration_s(value: object) -> float:
    """`90`, `"90s"`, `"15m"`, `"4h"`, `"1d"`, `"1w"` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 4h, 1d or 1w")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def positive_duration_s(value: object) -> float:
    """`parse_duration_s`, refusing zero and negative durations (a period or TTL of nothing means nothing)."""
    seconds = parse_duration_s(value)
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    return seconds


# A settings field holding a positive duration in seconds, written as 90, "90s", "15m", "4h", "1d" or "1w".
PositiveSeconds = Annotated[float, BeforeValidator(positive_duration_s)]


class CapRule(BaseModel):
    """One cap: at most `max` actions per lead (`scope: lead`) or per recipient address (`scope: recipient`)
    through `connector` (or `*`, all together) per `per`."""

    model_config = ConfigDict(extra="forbid")

    connector: str = Field("*", description='connector name, or "*" to count every connector together')
    max: int = Field(ge=1)
    per: PositiveSeconds = Field(description="period, e.g. 4h or 1d")
    marketing_only: bool = Field(True, description="count and cap only marketing actions")
    scope: Literal["lead", "recipient"] = Field(
        "lead",
        description="count per lead id, or per recipient address across every lead id (connectors that have "
        "an address: email)",
    )


_RESERVE = """
local now = tonumber(ARGV[1])
local member = ARGV[2]
local blocked_until = 0
for i, key in ipairs(KEYS) do
  local max = tonumber(ARGV[1 + 2 * i])
  local per = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - per)
  if not redis.call('ZSCORE', key, member) then
    local count = redis.call('ZCARD', key)
    if count >= max then
      -- the slot frees when the (count - max + 1)-th oldest reservation leaves the window
      local nth = redis.call('ZRANGE', key, count - max, count - max, 'WITHSCORES')
      local free_at = tonumber(nth[2]) + per
      if free_at > blocked_until then blocked_until = free_at end
    end
  end
end
if blocked_until > 0 then return blocked_until end
for i, key in ipairs(KEYS) do
  local per = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', key, 'NX', now, member)
  redis.call('PEXPIRE', key, per)
end
return 0
"""


def recipient_key(address: str) -> str:
    """The counting key of a recipient address: lowercased, a `+tag` dropped from the local part (one mailbox,
    many spellings), hashed so no address sits in a Redis key name."""
    local, _, domain = address.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    return hashlib.sha256(f"{local}@{domain}".encode()).hexdigest()[:32]


class FrequencyCaps:
    """Check-and-reserve of cap slots in Redis, shared by every dispatcher.

    Caps count in Redis sorted sets (one per cap and lead, or per cap and recipient address for `scope:
    recipient`; members are action ids, scores the reservation time in wall-clock ms): a rolling window, not
    calendar buckets. A recipient-scope cap applies only when the connector names an address for the action
    (`Connector.recipient_address`); the address is counted as `recipient_key` (lowercased, without `+tag`,
    hashed). Redis errors propagate.
    """

    def __init__(self, redis: Redis, prefix: str, rules: list[CapRule]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.rules = rules
        self._reserve = redis.register_script(_RESERVE)

    def _applicable(
        self, action: Action, connector: str, recipient: str | None = None
    ) -> list[tuple[str, CapRule]]:
        out = []
        for index, rule in enumerate(self.rules):
            if rule.marketing_only and not action.marketing:
                continue
            if rule.connector not in ("*", connector):
                continue
            if rule.scope == "recipient":
                if not recipient:
                    continue
                key = f"{self.prefix}cap:{index}:{rule.connector}:rcpt:{recipient_key(recipient)}"
            else:
                key = f"{self.prefix}cap:{index}:{rule.connector}:{action.lead_id}"
            out.append((key, rule))
        return out

    async def reserve(
        self, action: Action, connector: str, now_ms: int, recipient: str | None = None
    ) -> int | None:
        """Check every applicable cap and reserve a slot in all of them atomically (one Lua script), so two
        dispatchers cannot both take the last slot. None: the action may go now; else the epoch ms when the first
        slot frees (the dispatcher defers the action to then, or drops it when the rule says `on_cap: drop`), and
        nothing is reserved. Idempotent per action id: reserving again succeeds without counting twice, so
        retries and replays never count twice. `recipient`: the address the connector will send to, for the
        recipient-scope caps (None: they do not apply)."""
        caps = self._applicable(action, connector, recipient)
        if not caps:
            return None
        args: list[object] = [now_ms, action.action_id]
        for _key, rule in caps:
            args += [rule.max, int(rule.per * 1000)]
        blocked_until = int(await self._reserve(keys=[k for k, _ in caps], args=args))
        return blocked_until or None

    async def release(self, action: Action, connector: str, recipient: str | None = None) -> None:
        """Give the action's slots back when it ends without being sent (failed, suppressed); idempotent."""
        caps = self._applicable(action, connector, recipient)
        if caps:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, _rule in caps:
                    pipe.zrem(key, action.action_id)
                await pipe.execute()
