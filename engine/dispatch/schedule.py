"""The durable schedule in Redis: actions waiting for a later attempt (deferred by caps or quiet hours, held by
another claim, or a retry)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from engine.core.model import Action

_LEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[3]), id)
  local item = redis.call('HGET', KEYS[2], id)
  if item then table.insert(out, item) else redis.call('ZREM', KEYS[1], id) end
end
return out
"""

_PUT = """
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[1])
return 1
"""


@dataclass(frozen=True)
class ScheduledDelivery:
    """An action waiting for its next attempt. `attempts`: sends tried so far; `why`: deferred/retry/held;
    `emitted_ms`: when the worker emitted the action (wall clock), kept for the delivery-delay metric."""

    action: Action
    attempts: int
    why: str
    reason: str
    due_ms: int
    emitted_ms: int

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "action": self.action.to_json(),
                "attempts": self.attempts,
                "why": self.why,
                "reason": self.reason,
                "due_ms": self.due_ms,
                "emitted_ms": self.emitted_ms,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScheduledDelivery:
        doc = orjson.loads(raw)
        return cls(
            action=Action.from_json(doc["action"]),
            attempts=int(doc["attempts"]),
            why=doc["why"],
            reason=doc.get("reason", ""),
            due_ms=int(doc["due_ms"]),
            emitted_ms=int(doc.get("emitted_ms") or doc["due_ms"]),
        )


class Schedule:
    """Waiting actions in Redis: a sorted set `<prefix>schedule` (member action id, score due time in epoch ms) and
    a hash `<prefix>schedule:items` (action id → `ScheduledDelivery` JSON). One entry per action id.

    Durability: the dispatcher commits an action's Kafka offset once its entry is written, so nothing waits in
    memory only; durable as the Redis behind it (run it with AOF, `appendonly yes`; the dev stack's Redis keeps
    nothing on disk). Every method is one round trip (or one pipeline) and raises Redis errors to the caller.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.zkey = f"{prefix}schedule"
        self.hkey = f"{prefix}schedule:items"
        self._lease = redis.register_script(_LEASE)
        self._put = redis.register_script(_PUT)

    async def put(self, entry: ScheduledDelivery, *, only_if_absent: bool = False) -> bool:
        """Write the entry, replacing the action's existing one (a retry after a deferral keeps one entry); with
        `only_if_absent`, keep an existing entry and return False. Atomic (one Lua call)."""
        added = await self._put(
            keys=[self.zkey, self.hkey],
            args=[entry.action.action_id, entry.to_bytes(), entry.due_ms, "1" if only_if_absent else "0"],
        )
        return bool(added)

    async def lease_due(self, now_ms: int, limit: int, lease_ms: int) -> list[ScheduledDelivery]:
        """Take up to `limit` due entries, earliest first, pushing their due time `lease_ms` ahead in the same Lua
        call: if the dispatcher dies while handling them they come due again, and several dispatchers never take
        the same one at once."""
        raw = await self._lease(keys=[self.zkey, self.hkey], args=[now_ms, limit, lease_ms])
        return [ScheduledDelivery.from_bytes(item) for item in raw]

    async def remove(self, action_id: str) -> None:
        """Drop an entry once its outcome is final (sent, failed, suppressed, duplicate); idempotent."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.zkey, action_id)
            pipe.hdel(self.hkey, action_id)
            await pipe.execute()

    async def size(self) -> int:
        return int(await self.redis.zcard(self.zkey))

    async def next_due_ms(self) -> int | None:
        """Due time of the earliest entry, or None when the schedule is empty."""
        first = await self.redis.zrange(self.zkey, 0, 0, withscores=True)
        return int(first[0][1]) if first else None
