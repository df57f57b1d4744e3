"""Deduplicate SDK retries by `messageId` in Redis, without ever losing an event.

Contract — a two-phase claim per messageId (key `nudge:seen:{messageId}`):
1. `claim(ids, token)` atomically (one Lua script) sets each key to `pending:<token>` with a short TTL
   (`PENDING_TTL_S`) when it is absent, and reports every id as `fresh` (ours now), `duplicate` (already
   produced: value `done`) or `in_flight` (another request holds a pending claim).
2. After the broker acknowledged an event, `confirm(ids)` sets its key to `done` for `SEEN_TTL_S` (24 h: SDK
   retry windows are minutes). An event the broker did not acknowledge is `release`d (deleted only if still
   our own pending claim), so the SDK's retry produces it.
Why two-phase: claiming `done` before producing would make a retry after a failed produce look like a
duplicate and drop the event; marking only after producing would let two concurrent copies both produce. A
request that meets an `in_flight` id answers 503 and lets the SDK retry, rather than 200 for an event that may
still fail. If the collector dies between claim and confirm, the pending claim expires after `PENDING_TTL_S`
and retries get through. Redis errors propagate (`redis.RedisError`); the caller turns them into 503.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis

SEEN_TTL_S = 24 * 3600
PENDING_TTL_S = 60
KEY_PREFIX = "nudge:seen:"
DONE = "done"

_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then
    out[i] = 'fresh'
  else
    local held = redis.call('GET', key)
    if held == ARGV[3] then out[i] = 'duplicate' else out[i] = 'in_flight' end
  end
end
return out
"""

_CONFIRM = """
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'EX', ARGV[2]) end
return #KEYS
"""

_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key); n = n + 1 end
end
return n
"""


def seen_key(message_id: str) -> str:
    return KEY_PREFIX + message_id


@dataclass
class Claim:
    """Outcome of one `claim`: ids this request now owns, ids produced before, ids another request holds."""

    token: str
    fresh: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)


class MessageDeduper:
    """Claims, confirms and releases messageIds; see the module docstring for the protocol."""

    def __init__(
        self, redis: Redis, *, seen_ttl_s: int = SEEN_TTL_S, pending_ttl_s: int = PENDING_TTL_S
    ) -> None:
        self._redis = redis
        self._seen_ttl_s = seen_ttl_s
        self._pending_ttl_s = pending_ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._confirm = redis.register_script(_CONFIRM)

    async def claim(self, message_ids: list[str], token: str) -> Claim:
        claim = Claim(token)
        if not message_ids:
            return claim
        keys = [seen_key(m) for m in message_ids]
        outcomes = await self._claim(keys=keys, args=[f"pending:{token}", self._pending_ttl_s, DONE])
        for message_id, outcome in zip(message_ids, outcomes, strict=True):
            getattr(claim, outcome.decode() if isinstance(outcome, bytes) else outcome).append(message_id)
        return claim

    async def confirm(self, message_ids: Iterable[str]) -> None:
        keys = [seen_key(m) for m in message_ids]
        if keys:
            await self._confirm(keys=keys, args=[DONE, self._seen_ttl_s])

    async def release(self, message_ids: Iterable[str], token: str) -> None:
        keys = [seen_key(m) for m in message_ids]
        if keys:
            await self._release(keys=keys, args=[f"pending:{token}"])
