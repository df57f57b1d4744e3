"""Assignment state in Redis, changed only by Lua scripts so that concurrent processes stay consistent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

PREFIX = "nudge:{assign}:"
HISTORY_CAP = 50
CHANGES_CAP = 100_000  # the outbox stream keeps about this many changes for the relay (`relay.ChangeRelay`)
QUEUE_PRIORITY_MAX = 100_000
QUEUE_SCORE_LIMIT = 1_000_000

# Shared by every script that changes a lead: the history entry (JSON built in Python; `rep` spliced in here when
# only the script knows it) goes to the lead's capped history and to the `changes` stream (the outbox the relay
# publishes to `lead-updates`), in the same atomic step as the change itself.
_LIB = """
local function with_rep(entry, rep)
  if rep == nil or rep == false or rep == '' or string.find(entry, '"rep":', 1, true) then return entry end
  return string.sub(entry, 1, -2) .. ',"rep":' .. cjson.encode(rep) .. '}'
end
local function record(history, changes, lead, entry, cap)
  redis.call('RPUSH', history, entry)
  redis.call('LTRIM', history, -tonumber(cap), -1)
  redis.call('XADD', changes, 'MAXLEN', '~', 'CHANGES_CAP', '*', 'lead', lead, 'entry', entry)
end
local function wake(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
end
local function unqueue(queue, since, queued, lead)
  local member = redis.call('HGET', queued, 'member')
  if member then redis.call('ZREM', queue, member) end
  redis.call('ZREM', since, lead)
  redis.call('DEL', queued)
end
""".replace("CHANGES_CAP", str(CHANGES_CAP))

# KEYS: 1 owner, 2 loads, 3 cursors, 4 totals, 5 sla, 6 history, 7 version, 8 availability, 9 queue, 10 queued,
# 11 queue_since, 12 changes. ARGV[1]: options (JSON, every value a string so no number loses digits in cjson),
# ARGV[2..]: the owner hash fields, flat.
_COMMIT = _LIB + """
local o = cjson.decode(ARGV[1])
local owner = redis.call('HGET', KEYS[1], 'rep')
if o.previous == '' then
  if owner then return {'owned', owner} end
elseif owner ~= o.previous then
  return {'moved', owner or ''}
elseif o.breached ~= '' and (redis.call('HGET', KEYS[1], 'acked_at_ms')
    or redis.call('HGET', KEYS[1], 'sla_deadline_ms') ~= o.breached) then
  return {'moved', owner}  -- an SLA move of a lead acknowledged or re-timed since the breach was seen
end
if o.queue_mode == 'from_queue' then
  if redis.call('EXISTS', KEYS[10]) == 0 then return {'gone', ''} end
elseif o.queue_mode == 'respect' then
  if redis.call('EXISTS', KEYS[10]) == 1 then return {'queued', ''} end
  if redis.call('ZCARD', KEYS[9]) > 0 then return {'queue_busy', ''} end  -- leads are waiting: join them
end
if o.expected_version ~= '' and (redis.call('GET', KEYS[7]) or '0') ~= o.expected_version then
  return {'conflict', 'version'}
end
if o.cursor_pool ~= '' and (redis.call('HGET', KEYS[3], o.cursor_pool) or '') ~= o.expected_cursor then
  return {'conflict', 'cursor'}
end
if o.force ~= '1' then
  if redis.call('HGET', KEYS[8], o.rep) == 'away' then return {'conflict', 'away'} end
  if tonumber(redis.call('HGET', KEYS[2], o.rep) or '0') >= tonumber(o.capacity) then
    return {'conflict', 'full'}
  end
end
local reassignments = 0
local tried = ''
if o.previous ~= '' then
  redis.call('HINCRBY', KEYS[2], o.previous, -1)
  reassignments = tonumber(redis.call('HGET', KEYS[1], 'reassignments') or '0') + 1
  tried = (redis.call('HGET', KEYS[1], 'tried') or '') .. ','
elseif o.queue_mode == 'from_queue' then
  local queued_tried = redis.call('HGET', KEYS[10], 'tried') or ''
  if queued_tried ~= '' then tried = queued_tried .. ',' end
end
if o.queue_mode == 'from_queue' then unqueue(KEYS[9], KEYS[11], KEYS[10], o.lead) end
if o.previous ~= '' then redis.call('SREM', o.prefix .. 'leads:' .. o.previous, o.lead) end
redis.call('SADD', o.prefix .. 'leads:' .. o.rep, o.lead)
redis.call('HINCRBY', KEYS[2], o.rep, 1)
redis.call('HINCRBY', KEYS[4], o.rep, 1)
if o.cursor_pool ~= '' then redis.call('HSET', KEYS[3], o.cursor_pool, o.rep) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'reassignments', reassignments, 'tried', tried .. o.rep, unpack(ARGV, 2))
if o.deadline ~= '' then
  redis.call('HSET', KEYS[1], 'sla_deadline_ms', o.deadline)
  redis.call('ZADD', KEYS[5], o.deadline, o.lead)
else
  redis.call('ZREM', KEYS[5], o.lead)
end
record(KEYS[6], KEYS[12], o.lead, o.entry, o.cap)
redis.call('INCR', KEYS[7])
return {'ok', tostring(reassignments)}
"""

# KEYS: 1 owner, 2 sla, 3 history, 4 changes. ARGV: 1 rep ('' = whoever owns it), 2 now_ms, 3 lead, 4 entry, 5 cap
_ACK = _LIB + """
local owner = redis.call('HGET', KEYS[1], 'rep')
if not owner then return {'unknown', ''} end
if ARGV[1] ~= '' and owner ~= ARGV[1] then return {'not_owner', owner} end
local acked = redis.call('HGET', KEYS[1], 'acked_at_ms')
if acked then return {'already', owner, acked} end
redis.call('HSET', KEYS[1], 'acked_at_ms', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
record(KEYS[3], KEYS[4], ARGV[3], with_rep(ARGV[4], owner), ARGV[5])
return {'ok', owner, ARGV[2]}
"""

# KEYS: 1 owner, 2 loads, 3 sla, 4 history, 5 version, 6 queue, 7 queued, 8 queue_since, 9 changes, 10 wake.
# ARGV: 1 lead, 2 released entry, 3 cap, 4 expected owner ('' = any), 5 dequeued entry, 6 not-before (assigned or
# queued at or before this epoch ms, '' = any), 7 key prefix
_RELEASE = _LIB + """
local owner = redis.call('HGET', KEYS[1], 'rep')
if not owner then
  if redis.call('EXISTS', KEYS[7]) == 1 and ARGV[4] == '' then
    if ARGV[6] ~= '' and tonumber(redis.call('HGET', KEYS[7], 'queued_at_ms') or '0') > tonumber(ARGV[6]) then
      return {'newer', ''}
    end
    unqueue(KEYS[6], KEYS[8], KEYS[7], ARGV[1])
    record(KEYS[4], KEYS[9], ARGV[1], ARGV[5], ARGV[3])
    return {'dequeued', ''}
  end
  return {'none', ''}
end
if ARGV[4] ~= '' and owner ~= ARGV[4] then return {'not_owner', owner} end
if ARGV[6] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'assigned_at_ms') or '0') > tonumber(ARGV[6]) then
  return {'newer', owner}
end
redis.call('HINCRBY', KEYS[2], owner, -1)
redis.call('SREM', ARGV[7] .. 'leads:' .. owner, ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
record(KEYS[4], KEYS[9], ARGV[1], with_rep(ARGV[2], owner), ARGV[3])
redis.call('INCR', KEYS[5])
wake(KEYS[10])
return {'released', owner}
"""

# KEYS: 1 owner, 2 queue, 3 queued, 4 queue_seq, 5 queue_since, 6 history, 7 changes, and for a pass (ARGV[6] set)
# 8 loads, 9 sla, 10 version, 11 wake. ARGV: 1 lead, 2 queue score, 3 queued_at_ms, 4 entry, 5 cap, 6 the owner
# that passes ('' = a lead without owner joins the queue), 7 key prefix, 8.. the queued hash fields, flat.
# The per-rep sets `leads:<rep>` are named from the prefix inside the scripts (the rep is only known there); they
# share the `{assign}` hash tag, so a Redis Cluster still keeps every key of a script in one slot.
_ENQUEUE = _LIB + """
local owner = redis.call('HGET', KEYS[1], 'rep')
if ARGV[6] == '' then
  if owner then return {'owned', owner, ''} end
  if redis.call('EXISTS', KEYS[3]) == 1 then
    local member = redis.call('HGET', KEYS[3], 'member')
    return {'already', tostring(redis.call('ZRANK', KEYS[2], member) + 1), redis.call('HGET', KEYS[3], 'queued_at_ms')}
  end
else
  if owner ~= ARGV[6] then return {'not_owner', owner or '', ''} end
  redis.call('HINCRBY', KEYS[8], owner, -1)
  redis.call('SREM', ARGV[7] .. 'leads:' .. owner, ARGV[1])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[9], ARGV[1])
  redis.call('INCR', KEYS[10])
  wake(KEYS[11])
end
local seq = redis.call('INCR', KEYS[4])
local member = string.format('%016d', seq) .. '|' .. ARGV[1]
redis.call('ZADD', KEYS[2], ARGV[2], member)
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], 'member', member, 'queued_at_ms', ARGV[3], unpack(ARGV, 8))
record(KEYS[6], KEYS[7], ARGV[1], ARGV[4], ARGV[5])
return {'queued', tostring(redis.call('ZRANK', KEYS[2], member) + 1), ARGV[3]}
"""

# KEYS: 1 queued. Marks a waiting lead as alerted, once; 0 when it is no longer queued or was alerted already.
_MARK_ALERTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'alerted_at_ms', ARGV[1])
"""

# KEYS: 1 owner, 2 sla, 3 history, 4 changes. ARGV: 1 lead, 2 rep, 3 deadline ('' = stop), 4 entry, 5 cap
_SET_DEADLINE = _LIB + """
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
record(KEYS[3], KEYS[4], ARGV[1], ARGV[4], ARGV[5])
return 1
"""


def queue_score(priority: float, score: float) -> int:
    """The queue's sort key: higher priority first, then higher lead score; equal keys keep arrival order (the
    member names carry a sequence number). An integer below 2**53, so Redis stores it exactly."""
    p = min(max(int(priority), 0), QUEUE_PRIORITY_MAX)
    s = min(max(float(score), -QUEUE_SCORE_LIMIT), QUEUE_SCORE_LIMIT)
    return -(p * 10_000_000_000 + round((s + QUEUE_SCORE_LIMIT) * 1000))


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
    queued: dict[str, str] = field(default_factory=dict)  # the lead's queue entry, {} when it is not waiting


@dataclass(frozen=True)
class CommitResult:
    status: str  # "ok" | "owned" | "moved" | "conflict" | "gone" | "queued" | "queue_busy"
    detail: str = ""  # owner for owned/moved, reason for conflict, reassignment count for ok


@dataclass(frozen=True)
class EnqueueResult:
    status: str  # "queued" | "already" | "owned" | "not_owner"
    position: int  # 1 = next to be assigned (0 when not queued)
    queued_at_ms: int
    owner: str | None = None  # for "owned" / "not_owner"


@dataclass(frozen=True)
class ReleaseResult:
    status: str  # "released" | "dequeued" (was waiting in the queue) | "none" | "not_owner" | "newer"
    owner: str | None = None


@dataclass(frozen=True)
class QueueItem:
    """A lead waiting for a rep, as stored: the lead context, its priority and score, when it joined, the reps
    who already had it (a pass), and when the team channel was alerted (None: not yet)."""

    lead_id: str
    position: int
    queued_at_ms: int
    priority: int
    score: float
    lead: dict[str, Any]
    tried: tuple[str, ...]
    reason: str
    alerted_at_ms: int | None

    @classmethod
    def from_hash(cls, lead_id: str, position: int, raw: Mapping[str, str]) -> QueueItem:
        alerted = raw.get("alerted_at_ms")
        return cls(
            lead_id=lead_id,
            position=position,
            queued_at_ms=int(raw.get("queued_at_ms") or 0),
            priority=int(raw.get("priority") or 0),
            score=float(raw.get("score") or 0),
            lead=orjson.loads(raw["lead"]) if raw.get("lead") else {},
            tried=tuple(r for r in raw.get("tried", "").split(",") if r),
            reason=raw.get("reason", ""),
            alerted_at_ms=int(alerted) if alerted else None,
        )


class AssignmentStore:
    """Redis access for the assignment subsystem. Values come back decoded (str) whether or not the client
    uses `decode_responses`; Redis errors propagate.

    Keys (all under one hash tag, `nudge:{assign}:`, so a Redis Cluster keeps them in one slot and the scripts may
    touch several of them):
    - `owner:<lead>` hash: rep, strategy, assigned_at_ms, sla_deadline_ms, acked_at_ms, reassignments, tried,
      lead (JSON), waited_ms (time spent in the queue before this owner)
    - `history:<lead>` list of JSON entries (assigned, reassigned, acked, released, passed, queued, dequeued,
      sla_extended, sla_exhausted), newest last, capped at `HISTORY_CAP`
    - `changes` stream: the same entries with the lead id (`lead`, `entry`), written by the same script as the
      change itself: the outbox `relay.ChangeRelay` publishes to `lead-updates`; about `CHANGES_CAP` kept
    - `leads:<rep>` set of the leads the rep owns (the inbox); `loads` hash rep -> open leads; `totals` hash
      rep -> leads ever assigned; `cursors` hash pool -> last rep
    - `availability` hash rep -> "away" | "available" (run-time override of the roster)
    - `sla` sorted set lead -> ack deadline (epoch ms); `version` counter bumped by every change of loads or
      availability
    - `queue` sorted set of members `<seq>|<lead>` by `queue_score` (priority, then score, then arrival);
      `queued:<lead>` hash: member, queued_at_ms, priority, score, lead (JSON), tried, reason, alerted_at_ms;
      `queue_since` sorted set lead -> queued_at_ms (the oldest wait, alerts); `queue_seq` counter
    - `wake` list of at most one element, pushed when capacity frees (release, pass, a rep back): `nudge reps
      serve` blocks on it to drain the queue at once instead of at its next pass

    `commit` applies a `Choice` made from a `PoolSnapshot` only if that snapshot still holds for what the choice
    used: the lead has no owner (or, for a reassignment, still the expected one), the rotation cursor is unchanged,
    the rep is not marked away and below capacity (unless forced: a named reassignment), and for load-based choices
    the version is unchanged. With `queue_mode="respect"` a fresh assignment is refused while other leads wait
    (`queue_busy`: the lead joins the queue instead, so nobody jumps it); with `"from_queue"` the lead must still be
    waiting and leaves the queue in the same step. Otherwise it changes nothing and says why; the caller re-reads
    and chooses again. Hence one lead never gets two owners and the rotation is never skewed, whatever the number of
    processes. Load counts only change together with an owner change, in the same script: they cannot drift.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._commit = redis.register_script(_COMMIT)
        self._ack = redis.register_script(_ACK)
        self._release = redis.register_script(_RELEASE)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._mark_alerted = redis.register_script(_MARK_ALERTED)
        self._set_deadline = redis.register_script(_SET_DEADLINE)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def owner_key(self, lead_id: str) -> str:
        return self.key(f"owner:{lead_id}")

    def history_key(self, lead_id: str) -> str:
        return self.key(f"history:{lead_id}")

    def queued_key(self, lead_id: str) -> str:
        return self.key(f"queued:{lead_id}")

    @property
    def changes_key(self) -> str:
        return self.key("changes")

    @property
    def wake_key(self) -> str:
        return self.key("wake")

    async def snapshot(self, lead_id: str) -> StoreSnapshot:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.key("version"))
            pipe.hgetall(self.key("loads"))
            pipe.hgetall(self.key("availability"))
            pipe.hgetall(self.key("cursors"))
            pipe.hgetall(self.owner_key(lead_id))
            pipe.hgetall(self.queued_key(lead_id))
            version, loads, availability, cursors, owner, queued = await pipe.execute()
        return StoreSnapshot(
            version=_s(version) or "0",
            loads={k: int(v) for k, v in _map(loads).items()},
            availability={k: v != "away" for k, v in _map(availability).items()},
            cursors=_map(cursors),
            owner=_map(owner),
            queued=_map(queued),
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
        queue_mode: str = "",
        force: bool = False,
    ) -> CommitResult:
        """`queue_mode`: "" ignores the queue (reassignments, `Assigner.assign`), "respect" or "from_queue" (see
        the class docstring). `force` skips the away and capacity checks (a reassignment to a named rep)."""
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        options = {
            "rep": rep_id,
            "capacity": str(capacity),
            "cursor_pool": cursor_pool or "",
            "expected_cursor": expected_cursor or "",
            "expected_version": expected_version or "",
            "previous": previous_rep or "",
            "lead": lead_id,
            "deadline": "" if deadline_ms is None else str(deadline_ms),
            "entry": orjson.dumps(history_entry).decode(),
            "cap": str(HISTORY_CAP),
            "breached": "" if breached_deadline_ms is None else str(breached_deadline_ms),
            "queue_mode": queue_mode,
            "force": "1" if force else "",
            "prefix": self.prefix,
        }
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
                self.key("queue"),
                self.queued_key(lead_id),
                self.key("queue_since"),
                self.changes_key,
            ],
            args=[orjson.dumps(options), *flat],
        )
        return CommitResult(_s(result[0]), _s(result[1]) if len(result) > 1 else "")

    async def owner(self, lead_id: str) -> dict[str, str]:
        return _map(await self.redis.hgetall(self.owner_key(lead_id)))

    async def ack(
        self, lead_id: str, rep_id: str | None, now_ms: int, entry: dict[str, Any]
    ) -> tuple[str, str]:
        """("ok"|"already"|"not_owner"|"unknown", owner rep id or "")."""
        result = await self._ack(
            keys=[self.owner_key(lead_id), self.key("sla"), self.history_key(lead_id), self.changes_key],
            args=[rep_id or "", now_ms, lead_id, orjson.dumps(entry), HISTORY_CAP],
        )
        return _s(result[0]), _s(result[1])

    async def release(
        self,
        lead_id: str,
        entry: dict[str, Any],
        *,
        expected_rep: str | None = None,
        dequeued_entry: dict[str, Any] | None = None,
        not_after_ms: int | None = None,
    ) -> ReleaseResult:
        """Drop the owner and free its capacity (`released`, with the former owner), or take the lead out of the
        queue when it was waiting and no `expected_rep` is given (`dequeued`). `expected_rep`: only if that rep
        owns it (`not_owner` otherwise). `not_after_ms`: only an assignment (or queue entry) made at or before that
        time (`newer` otherwise: a late lifecycle event never releases a newer assignment)."""
        result = await self._release(
            keys=[
                self.owner_key(lead_id),
                self.key("loads"),
                self.key("sla"),
                self.history_key(lead_id),
                self.key("version"),
                self.key("queue"),
                self.queued_key(lead_id),
                self.key("queue_since"),
                self.changes_key,
                self.wake_key,
            ],
            args=[
                lead_id,
                orjson.dumps(entry),
                HISTORY_CAP,
                expected_rep or "",
                orjson.dumps(dequeued_entry or {**entry, "event": "dequeued"}),
                "" if not_after_ms is None else not_after_ms,
                self.prefix,
            ],
        )
        return ReleaseResult(_s(result[0]), _s(result[1]) or None)

    async def enqueue(
        self,
        lead_id: str,
        *,
        queued_at_ms: int,
        priority: int,
        score: float,
        lead: Mapping[str, Any],
        tried: tuple[str, ...] = (),
        reason: str = "",
        entry: dict[str, Any],
        passing_rep: str | None = None,
    ) -> EnqueueResult:
        """Put a lead without owner in the queue (`queued` with its 1-based position; `already` when it waits
        already; `owned` when it has an owner meanwhile). With `passing_rep`, that rep's lead moves from the rep
        to the queue in one step (`not_owner` when the rep no longer owns it)."""
        keys = [
            self.owner_key(lead_id),
            self.key("queue"),
            self.queued_key(lead_id),
            self.key("queue_seq"),
            self.key("queue_since"),
            self.history_key(lead_id),
            self.changes_key,
        ]
        if passing_rep:
            keys += [self.key("loads"), self.key("sla"), self.key("version"), self.wake_key]
        fields = {
            "priority": str(int(priority)),
            "score": repr(float(score)),
            "lead": orjson.dumps(dict(lead), default=str),
            "tried": ",".join(tried),
            "reason": reason,
        }
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        result = await self._enqueue(
            keys=keys,
            args=[
                lead_id,
                queue_score(priority, score),
                queued_at_ms,
                orjson.dumps(entry),
                HISTORY_CAP,
                passing_rep or "",
                self.prefix,
                *flat,
            ],
        )
        status = _s(result[0])
        if status in ("owned", "not_owner"):
            return EnqueueResult(status, 0, 0, _s(result[1]) or None)
        return EnqueueResult(status, int(_s(result[1])), int(_s(result[2]) or 0))

    async def queue_items(self, limit: int = 100, offset: int = 0) -> list[QueueItem]:
        """Waiting leads in the order they will be assigned (at most `limit`, from `offset`)."""
        members = [_s(m) for m in await self.redis.zrange(self.key("queue"), offset, offset + limit - 1)]
        if not members:
            return []
        leads = [m.split("|", 1)[1] for m in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            for lead in leads:
                pipe.hgetall(self.queued_key(lead))
            raws = await pipe.execute()
        return [
            QueueItem.from_hash(lead, offset + i + 1, _map(raw))
            for i, (lead, raw) in enumerate(zip(leads, raws, strict=True))
            if raw
        ]

    async def queued(self, lead_id: str) -> QueueItem | None:
        raw = _map(await self.redis.hgetall(self.queued_key(lead_id)))
        if not raw:
            return None
        rank = await self.redis.zrank(self.key("queue"), raw.get("member", ""))
        return QueueItem.from_hash(lead_id, (rank or 0) + 1, raw)

    async def queue_length(self) -> int:
        return int(await self.redis.zcard(self.key("queue")))

    async def oldest_queued_ms(self) -> int | None:
        """When the longest-waiting lead joined the queue (None: nobody waits)."""
        oldest = await self.redis.zrange(self.key("queue_since"), 0, 0, withscores=True)
        return int(oldest[0][1]) if oldest else None

    async def queued_since(self, before_ms: int, limit: int = 100) -> list[str]:
        """Leads waiting since `before_ms` or earlier, longest first."""
        leads = await self.redis.zrangebyscore(self.key("queue_since"), "-inf", before_ms, start=0, num=limit)
        return [_s(lead) for lead in leads]

    async def mark_alerted(self, lead_id: str, now_ms: int) -> bool:
        """True once per queue entry: the caller that gets it sends the team-channel alert."""
        return bool(int(await self._mark_alerted(keys=[self.queued_key(lead_id)], args=[now_ms])))

    async def set_deadline(
        self, lead_id: str, rep_id: str, deadline_ms: int | None, entry: dict[str, Any]
    ) -> bool:
        """Move (or, with None, stop) the SLA clock of a lead still owned, unacknowledged, by `rep_id`."""
        done = await self._set_deadline(
            keys=[self.owner_key(lead_id), self.key("sla"), self.history_key(lead_id), self.changes_key],
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
            if available:
                pipe.lpush(self.wake_key, "1")  # a rep back: waiting leads may go to them now
                pipe.ltrim(self.wake_key, 0, 0)
            await pipe.execute()

    async def wait_for_wake(self, timeout_s: float) -> bool:
        """Block up to `timeout_s` for a wake signal (capacity freed somewhere); True when one came."""
        return await self.redis.blpop([self.wake_key], timeout=timeout_s) is not None

    async def availability(self) -> dict[str, bool]:
        raw = _map(await self.redis.hgetall(self.key("availability")))
        return {k: v != "away" for k, v in raw.items()}

    async def loads(self) -> dict[str, int]:
        return {k: int(v) for k, v in _map(await self.redis.hgetall(self.key("loads"))).items()}

    async def totals(self) -> dict[str, int]:
        return {k: int(v) for k, v in _map(await self.redis.hgetall(self.key("totals"))).items()}

    async def history(self, lead_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(item) for item in await self.redis.lrange(self.history_key(lead_id), 0, -1)]

    async def owned_leads(self, lead_ids: list[str]) -> list[dict[str, str]]:
        """The owner hashes of `lead_ids` (in order; {} for a lead without owner)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for lead in lead_ids:
                pipe.hgetall(self.owner_key(lead))
            return [_map(raw) for raw in await pipe.execute()]

    async def leads_of(self, rep_id: str) -> list[str]:
        """The leads `rep_id` owns now (unordered)."""
        return sorted(_s(lead) for lead in await self.redis.smembers(self.key(f"leads:{rep_id}")))
