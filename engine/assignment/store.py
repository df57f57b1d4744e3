"""Assignment state in Redis, changed only by Lua scripts so that concurrent processes stay consistent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

PREFIX = "nudge:{assign}:"
HISTORY_CAP = 50

_COMMIT = """
local owner = redis.call('HGET', KEYS[1], 'rep')
if ARGV[6] == '' then
  if owner then return {'owned', owner} end
elseif owner ~= ARGV[6] then
  return {'moved', owner or ''}
elseif ARGV[11] ~= '' and (redis.call('HGET', KEYS[1], 'acked_at_ms')
    or redis.call('HGET', KEYS[1], 'sla_deadline_ms') ~= ARGV[11]) then
  return {'moved', owner}  -- an SLA move of a lead acknowledged or re-timed since the breach was seen
end
if ARGV[5] ~= '' and (redis.call('GET', KEYS[7]) or '0') ~= ARGV[5] then return {'conflict', 'version'} end
if ARGV[3] ~= '' and (redis.call('HGET', KEYS[3], ARGV[3]) or '') ~= ARGV[4] then
  return {'conflict', 'cursor'}
end
if redis.call('HGET', KEYS[8], ARGV[1]) == 'away' then return {'conflict', 'away'} end
if tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') >= tonumber(ARGV[2]) then
  return {'conflict', 'full'}
end
local reassignments = 0
local tried = ''
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[6], -1)
  reassignments = tonumber(redis.call('HGET', KEYS[1], 'reassignments') or '0') + 1
  tried = (redis.call('HGET', KEYS[1], 'tried') or '') .. ','
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[3], ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'reassignments', reassignments, 'tried', tried .. ARGV[1], unpack(ARGV, 12))
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'sla_deadline_ms', ARGV[8])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[7])
else
  redis.call('ZREM', KEYS[5], ARGV[7])
end
redis.call('RPUSH', KEYS[6], ARGV[9])
redis.call('LTRIM', KEYS[6], -tonumber(ARGV[10]), -1)
redis.call('INCR', KEYS[7])
return {'ok', tostring(reassignments)}
"""

_ACK = """
local owner = redis.call('HGET', KEYS[1], 'rep')
if not owner then return {'unknown', ''} end
if ARGV[1] ~= '' and owner ~= ARGV[1] then return {'not_owner', owner} end
local acked = redis.call('HGET', KEYS[1], 'acked_at_ms')
if acked then return {'already', owner, acked} end
redis.call('HSET', KEYS[1], 'acked_at_ms', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
return {'ok', owner, ARGV[2]}
"""

_RELEASE = """
local owner = redis.call('HGET', KEYS[1], 'rep')
if not owner then return '' end
redis.call('HINCRBY', KEYS[2], owner, -1)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
redis.call('INCR', KEYS[5])
return owner
"""

_SET_DEADLINE = """
if redis.call('HGET', KEYS[1], 'rep') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'acked_at_ms') then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'sla_deadline_ms')
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'sla_deadline_ms', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
return 1
"""


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _map(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


@dataclass(frozen=True)
class StoreSnapshot:
    """Shared state read in one MULTI/EXEC: consistent in itself, possibly stale by the time of the commit."""

    version: str
    loads: dict[str, int]
    availability: dict[str, bool]
    cursors: dict[str, str]
    owner: dict[str, str]


@dataclass(frozen=True)
class CommitResult:
    status: str  # "ok" | "owned" | "moved" | "conflict"
    detail: str = ""  # owner for owned/moved, reason for conflict, reassignment count for ok


class AssignmentStore:
    """Redis access for the assignment subsystem. Values come back decoded (str) whether or not the client
    uses `decode_responses`; Redis errors propagate.

    Keys (all under one hash tag, `nudge:{assign}:`, so a Redis Cluster keeps them in one slot and the scripts may
    touch several of them):
    - `owner:<lead>` hash: rep, strategy, assigned_at_ms, sla_deadline_ms, acked_at_ms, reassignments, tried,
      lead (JSON)
    - `history:<lead>` list of JSON entries (assigned, reassigned, acked, released, sla_extended), newest last,
      capped at `HISTORY_CAP`
    - `loads` hash rep -> open leads; `totals` hash rep -> leads ever assigned; `cursors` hash pool -> last rep
    - `availability` hash rep -> "away" | "available" (run-time override of the roster)
    - `sla` sorted set lead -> ack deadline (epoch ms); `version` counter bumped by every change of loads or
      availability

    `commit` applies a `Choice` made from a `PoolSnapshot` only if that snapshot still holds for what the choice
    used: the lead has no owner (or, for a reassignment, still the expected one), the rotation cursor is unchanged,
    the rep is not marked away and below capacity, and for load-based choices the version is unchanged. Otherwise it
    changes nothing and says why (`owned` with the owner, `moved`, or `conflict`); the caller re-reads and chooses
    again. Hence one lead never gets two owners and the rotation is never skewed, whatever the number of processes.
    Load counts only change together with an owner change, in the same script: they cannot drift from the owners.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._commit = redis.register_script(_COMMIT)
        self._ack = redis.register_script(_ACK)
        self._release = redis.register_script(_RELEASE)
        self._set_deadline = redis.register_script(_SET_DEADLINE)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def owner_key(self, lead_id: str) -> str:
        return self.key(f"owner:{lead_id}")

    def history_key(self, lead_id: str) -> str:
        return self.key(f"history:{lead_id}")

    async def snapshot(self, lead_id: str) -> StoreSnapshot:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.key("version"))
            pipe.hgetall(self.key("loads"))
            pipe.hgetall(self.key("availability"))
            pipe.hgetall(self.key("cursors"))
            pipe.hgetall(self.owner_key(lead_id))
            version, loads, availability, cursors, owner = await pipe.execute()
        return StoreSnapshot(
            version=_s(version) or "0",
            loads={k: int(v) for k, v in _map(loads).items()},
            availability={k: v != "away" for k, v in _map(availability).items()},
            cursors=_map(cursors),
            owner=_map(owner),
        )

    async def commit(
        self,
        lead_id: str,
        *,
        rep_id: str,
        capacity: int,
        cursor_pool: str | None,
        expected_cursor: str | None,
        expected_version: str | None,
        previous_rep: str | None,
        deadline_ms: int | None,
        breached_deadline_ms: int | None = None,
        history_entry: dict[str, Any],
        fields: dict[str, Any],
    ) -> CommitResult:
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        result = await self._commit(
            keys=[
                self.owner_key(lead_id),
                self.key("loads"),
                self.key("cursors"),
                self.key("totals"),
                self.key("sla"),
                self.history_key(lead_id),
                self.key("version"),
                self.key("availability"),
            ],
            args=[
                rep_id,
                capacity,
                cursor_pool or "",
                expected_cursor or "",
                expected_version or "",
                previous_rep or "",
                lead_id,
                "" if deadline_ms is None else deadline_ms,
                orjson.dumps(history_entry),
                HISTORY_CAP,
                "" if breached_deadline_ms is None else breached_deadline_ms,
                *flat,
            ],
        )
        return CommitResult(_s(result[0]), _s(result[1]) if len(result) > 1 else "")

    async def owner(self, lead_id: str) -> dict[str, str]:
        return _map(await self.redis.hgetall(self.owner_key(lead_id)))

    async def ack(
        self, lead_id: str, rep_id: str | None, now_ms: int, entry: dict[str, Any]
    ) -> tuple[str, str]:
        """("ok"|"already"|"not_owner"|"unknown", owner rep id or "")."""
        result = await self._ack(
            keys=[self.owner_key(lead_id), self.key("sla"), self.history_key(lead_id)],
            args=[rep_id or "", now_ms, lead_id, orjson.dumps(entry), HISTORY_CAP],
        )
        return _s(result[0]), _s(result[1])

    async def release(self, lead_id: str, entry: dict[str, Any]) -> str | None:
        """Drop the owner and free its capacity; returns the former owner (None: the lead had none)."""
        owner = _s(
            await self._release(
                keys=[
                    self.owner_key(lead_id),
                    self.key("loads"),
                    self.key("sla"),
                    self.history_key(lead_id),
                    self.key("version"),
                ],
                args=[lead_id, orjson.dumps(entry), HISTORY_CAP],
            )
        )
        return owner or None

    async def set_deadline(
        self, lead_id: str, rep_id: str, deadline_ms: int | None, entry: dict[str, Any]
    ) -> bool:
        """Move (or, with None, stop) the SLA clock of a lead still owned, unacknowledged, by `rep_id`."""
        done = await self._set_deadline(
            keys=[self.owner_key(lead_id), self.key("sla"), self.history_key(lead_id)],
            args=[
                lead_id,
                rep_id,
                "" if deadline_ms is None else deadline_ms,
                orjson.dumps(entry),
                HISTORY_CAP,
            ],
        )
        return bool(int(done))

    async def due(self, now_ms: int, limit: int = 100) -> list[str]:
        leads = await self.redis.zrangebyscore(self.key("sla"), "-inf", now_ms, start=0, num=limit)
        return [_s(lead) for lead in leads]

    async def drop_deadline(self, lead_id: str) -> None:
        await self.redis.zrem(self.key("sla"), lead_id)

    async def set_availability(self, rep_id: str, available: bool) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key("availability"), rep_id, "available" if available else "away")
            pipe.incr(self.key("version"))  # choices made before the change must be re-made
            await pipe.execute()

    async def availability(self) -> dict[str, bool]:
        raw = _map(await self.redis.hgetall(self.key("availability")))
        return {k: v != "away" for k, v in raw.items()}

    async def loads(self) -> dict[str, int]:
        return {k: int(v) for k, v in _map(await self.redis.hgetall(self.key("loads"))).items()}

    async def totals(self) -> dict[str, int]:
        return {k: int(v) for k, v in _map(await self.redis.hgetall(self.key("totals"))).items()}

    async def history(self, lead_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(item) for item in await self.redis.lrange(self.history_key(lead_id), 0, -1)]
