"""The durable schedule in Redis: actions waiting for a later attempt (deferred by caps or quiet hours, held by
another claim, or a retry), indexed by lead so that a lead's unsubscribe or conversion reaches its waiting actions
at once."""

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
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
return 1
"""

# Bring a lead's waiting entries forward to `now` (ARGV[1]), so the schedule loop re-checks them at once:
# mode 'marketing' takes its marketing entries, mode 'rule' those of rule ARGV[3] fired before ARGV[4].
# Only entries due later than now move; an index entry whose action left the schedule is dropped.
_BRING_FORWARD = """
local now = tonumber(ARGV[1])
local index = redis.call('HGETALL', KEYS[2])
local moved = 0
for i = 1, #index, 2 do
  local id, flags = index[i], index[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score then
    redis.call('HDEL', KEYS[2], id)
  else
    local marketing, fired, rule = string.match(flags, '^(%d)|(%-?%d+)|(.*)$')
    local wanted = false
    if ARGV[2] == 'marketing' then
      wanted = marketing == '1'
    elseif ARGV[2] == 'rule' then
      wanted = rule == ARGV[3] and tonumber(fired) < tonumber(ARGV[4])
    end
    if wanted and tonumber(score) > now then
      redis.call('ZADD', KEYS[1], 'XX', now, id)
      moved = moved + 1
    end
  end
end
return moved
"""


@dataclass(frozen=True)
class ScheduledDelivery:
    """An action waiting for its next attempt. `attempts`: sends tried so far; `why`: deferred/retry/held;
    `emitted_ms`: when the worker emitted the action (wall clock), kept for the delivery-delay metric;
    `expires_at_ms`: the action's expiry, kept beside it (read from the record even before the core's `Action`
    carried it)."""

    action: Action
    attempts: int
    why: str
    reason: str
    due_ms: int
    emitted_ms: int
    expires_at_ms: int | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "action": self.action.to_json(),
                "attempts": self.attempts,
                "why": self.why,
                "reason": self.reason,
                "due_ms": self.due_ms,
                "emitted_ms": self.emitted_ms,
                "expires_at_ms": self.expires_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScheduledDelivery:
        doc = orjson.loads(raw)
        expires = doc.get("expires_at_ms")
        if expires is None:
            expires = doc["action"].get("expires_at_ms")
        return cls(
            action=Action.from_json(doc["action"]),
            attempts=int(doc["attempts"]),
            why=doc["why"],
            reason=doc.get("reason", ""),
            due_ms=int(doc["due_ms"]),
            emitted_ms=int(doc.get("emitted_ms") or doc["due_ms"]),
            expires_at_ms=int(expires) if expires is not None else None,
        )


def _index_flags(action: Action) -> str:
    return f"{1 if action.marketing else 0}|{action.fired_at_ms}|{action.rule}"


class Schedule:
    """Waiting actions in Redis: a sorted set `<prefix>schedule` (member action id, score due time in epoch ms), a
    hash `<prefix>schedule:items` (action id → `ScheduledDelivery` JSON), and per lead a hash
    `<prefix>schedule:lead:<lead id>` (action id → `marketing|fired_at_ms|rule`) that finds a lead's entries
    without a scan. One entry per action id.

    Durability: the dispatcher commits an action's Kafka offset once its entry is written, so nothing waits in
    memory only; durable as the Redis behind it (run it with AOF, `appendonly yes`; the dev stack's Redis keeps
    nothing on disk). Every method is one round trip (or one pipeline) and raises Redis errors to the caller.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.zkey = f"{prefix}schedule"
        self.hkey = f"{prefix}schedule:items"
        self._lease = redis.register_script(_LEASE)
        self._put = redis.register_script(_PUT)
        self._bring_forward = redis.register_script(_BRING_FORWARD)

    def lead_key(self, lead_id: str) -> str:
        return f"{self.prefix}schedule:lead:{lead_id}"

    async def put(self, entry: ScheduledDelivery, *, only_if_absent: bool = False) -> bool:
        """Write the entry, replacing the action's existing one (a retry after a deferral keeps one entry); with
        `only_if_absent`, keep an existing entry and return False. Atomic (one Lua call), index included."""
        action = entry.action
        added = await self._put(
            keys=[self.zkey, self.hkey, self.lead_key(action.lead_id)],
            args=[
                action.action_id,
                entry.to_bytes(),
                entry.due_ms,
                "1" if only_if_absent else "0",
                _index_flags(action),
            ],
        )
        return bool(added)

    async def lease_due(self, now_ms: int, limit: int, lease_ms: int) -> list[ScheduledDelivery]:
        """Take up to `limit` due entries, earliest first, pushing their due time `lease_ms` ahead in the same Lua
        call: if the dispatcher dies while handling them they come due again, and several dispatchers never take
        the same one at once."""
        raw = await self._lease(keys=[self.zkey, self.hkey], args=[now_ms, limit, lease_ms])
        return [ScheduledDelivery.from_bytes(item) for item in raw]

    async def remove(self, action_id: str, lead_id: str | None = None) -> None:
        """Drop an entry once its outcome is final (sent, failed, suppressed, duplicate); idempotent. Without
        `lead_id` the lead's index keeps a stale field, which `bring_forward` drops when it meets it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.zkey, action_id)
            pipe.hdel(self.hkey, action_id)
            if lead_id is not None:
                pipe.hdel(self.lead_key(lead_id), action_id)
            await pipe.execute()

    async def bring_forward_marketing(self, lead_id: str, now_ms: int) -> int:
        """Make every waiting marketing action of `lead_id` due now (a consent withdrawal: the schedule loop then
        re-checks and suppresses them within a poll interval). Returns how many moved."""
        return int(
            await self._bring_forward(
                keys=[self.zkey, self.lead_key(lead_id)], args=[now_ms, "marketing", "", 0]
            )
        )

    async def bring_forward_rule(self, lead_id: str, rule: str, before_ms: int, now_ms: int) -> int:
        """Make the waiting actions of `lead_id` for `rule` that fired before `before_ms` due now (a conversion).
        Returns how many moved."""
        return int(
            await self._bring_forward(
                keys=[self.zkey, self.lead_key(lead_id)], args=[now_ms, "rule", rule, before_ms]
            )
        )

    async def size(self) -> int:
        return int(await self.redis.zcard(self.zkey))

    async def next_due_ms(self) -> int | None:
        """Due time of the earliest entry, or None when the schedule is empty."""
        first = await self.redis.zrange(self.zkey, 0, 0, withscores=True)
        return int(first[0][1]) if first else None


def in_priority_order(entries: list[ScheduledDelivery]) -> list[list[ScheduledDelivery]]:
    """Due entries grouped by lead (leads in the order first seen), each group highest `priority` first, then
    earliest due, then earliest fired. The dispatcher handles one group's entries one after the other, so when
    caps or quiet hours release several actions of a lead at once (the end of the quiet period, a freed cap slot),
    the caps see the higher-priority action first and it wins the slot; the others are deferred again."""
    groups: dict[str, list[ScheduledDelivery]] = {}
    for entry in entries:
        groups.setdefault(entry.action.lead_id, []).append(entry)
    return [
        sorted(group, key=lambda e: (-e.action.priority, e.due_ms, e.action.fired_at_ms, e.action.action_id))
        for group in groups.values()
    ]
