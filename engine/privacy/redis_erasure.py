"""Every Redis key of a lead, found from the key layouts of the processes that write them, and removed:

- profile, merges, known mark (the collector, `engine.collector.identity`): `nudge:profile:{id}`,
  `nudge:alias:{id}`, `nudge:client-alias:{id}` and every alias whose value is the id, `nudge:known:{id}`;
- dedupe claims (the collector, `engine.collector.dedupe`): `nudge:seen:{messageId}` where the message id
  contains the lead id (SDKs make random message ids; some senders build them from the user id);
- schedule (the dispatcher, `engine.dispatch.schedule`): the lead's entries in `{p}schedule` and
  `{p}schedule:items`, its index `{p}schedule:lead:{id}`;
- re-check state (`engine.dispatch.policies.recheck`): `{p}recheck:{id}`;
- caps (`engine.dispatch.policies.caps`): `{p}cap:{n}:{connector}:{id}`, and the lead's action ids in recipient
  caps `{p}cap:...:rcpt:{hash}`;
- idempotency claims (`engine.dispatch.policies.idempotency`): `{p}idem:{action id}` of each of the lead's
  actions (their ids come from ClickHouse, see `erase_action_keys`);
- assignment (`engine.assignment.store`): owner (the rep's load released, the lead out of the rep's set), queue
  entry, history, SLA deadline, and the lead's entries in the `changes` stream.

`{p}` is the dispatcher's prefix `nudge:{NUDGE_APP_ID}:`. A last pass removes any other key whose name ends in
`:{id}` (a per-lead key of a feature added later), so the erasure does not silently miss it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
from redis.asyncio import Redis

from engine.assignment.store import PREFIX as ASSIGN_PREFIX
from engine.collector.identity import ALIAS_PREFIX, CLIENT_ALIAS_PREFIX, KNOWN_PREFIX, PROFILE_PREFIX

SCAN_COUNT = 1000
SEEN_PREFIX = "nudge:seen:"  # engine.collector.dedupe.KEY_PREFIX
# Names of keys that hold many leads: an id equal to one of them must never make the last pass delete such a key.
SHARED_NAMES = frozenset(
    {
        "schedule",
        "items",
        "loads",
        "cursors",
        "totals",
        "sla",
        "version",
        "availability",
        "queue",
        "queue_since",
        "queue_seq",
        "changes",
        "wake",
        "active",
    }
)

# The assignment of one lead, gone: its owner's load released (and the lead out of the rep's set), out of the
# queue and the SLA index, its history deleted. KEYS: 1 owner, 2 loads, 3 sla, 4 history, 5 queue, 6 queued,
# 7 queue_since, 8 version. ARGV: 1 lead, 2 prefix. Returns {released, dequeued, history entries}.
_ERASE_ASSIGNMENT = """
local released, dequeued = 0, 0
local owner = redis.call('HGET', KEYS[1], 'rep')
if owner then
  redis.call('HINCRBY', KEYS[2], owner, -1)
  redis.call('SREM', ARGV[2] .. 'leads:' .. owner, ARGV[1])
  released = 1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local member = redis.call('HGET', KEYS[6], 'member')
if member then
  redis.call('ZREM', KEYS[5], member)
  dequeued = 1
end
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('DEL', KEYS[6])
local history = redis.call('LLEN', KEYS[4])
redis.call('DEL', KEYS[4])
if released == 1 or dequeued == 1 then redis.call('INCR', KEYS[8]) end
return {released, dequeued, history}
"""


def dispatch_prefix(app_id: str) -> str:
    """The dispatcher's key prefix (`engine.dispatch.dispatcher.Dispatcher.prefix`)."""
    return f"nudge:{app_id}:"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisEraser:
    """Removes every key of a set of lead ids (the module docstring lists them); counts what it removed by kind.

    Blocks for a few round trips per id plus one SCAN of the keyspace (COUNT 1000 per call: Redis stays
    responsive, the erasure takes about a second per million keys). Idempotent: erasing again removes nothing and
    counts zeros. Redis errors propagate (the coordinator retries the whole step)."""

    def __init__(self, redis: Redis, app_id: str, assign_prefix: str = ASSIGN_PREFIX) -> None:
        self.redis = redis
        self.prefix = dispatch_prefix(app_id)
        self.assign_prefix = assign_prefix
        self._erase_assignment = redis.register_script(_ERASE_ASSIGNMENT)

    async def erase(self, ids: Iterable[str]) -> dict[str, int]:
        """Remove every key of `ids`; returns counts per kind (`profile`, `aliases`, `known`, `schedule`,
        `recheck`, `caps`, `assignment`, `assignment_history`, `assignment_changes`, `dedupe`, `other`)."""
        leads = list(dict.fromkeys(ids))
        counts: Counter[str] = Counter()
        for lead in leads:
            await self._assignment(lead, counts)
            await self._schedule(lead, counts)
        await self._changes(set(leads), counts)
        await self._scan(set(leads), counts)
        return {kind: counts.get(kind, 0) for kind in self.KINDS}

    KINDS = (
        "profile",
        "aliases",
        "known",
        "schedule",
        "recheck",
        "caps",
        "assignment",
        "assignment_history",
        "assignment_changes",
        "dedupe",
        "other",
    )

    async def erase_action_keys(self, action_ids: Iterable[str]) -> dict[str, int]:
        """Drop the idempotency claims of the lead's actions and their slots in recipient-scope caps (counting
        sets named by a hashed address, whose members are action ids). Returns `{"idempotency", "caps"}`."""
        actions = list(dict.fromkeys(action_ids))
        idem = 0
        for start in range(0, len(actions), 500):
            chunk = actions[start : start + 500]
            idem += int(await self.redis.delete(*[f"{self.prefix}idem:{a}" for a in chunk])) if chunk else 0
        caps = 0
        if actions:
            async for key in self.redis.scan_iter(match=f"{self.prefix}cap:*:rcpt:*", count=SCAN_COUNT):
                caps += int(await self.redis.zrem(key, *actions))
        return {"idempotency": idem, "caps": caps}

    async def _assignment(self, lead: str, counts: Counter[str]) -> None:
        ap = self.assign_prefix
        released, dequeued, history = await self._erase_assignment(
            keys=[
                f"{ap}owner:{lead}",
                f"{ap}loads",
                f"{ap}sla",
                f"{ap}history:{lead}",
                f"{ap}queue",
                f"{ap}queued:{lead}",
                f"{ap}queue_since",
                f"{ap}version",
            ],
            args=[lead, ap],
        )
        counts["assignment"] += int(released) + int(dequeued)
        counts["assignment_history"] += int(history)

    async def _schedule(self, lead: str, counts: Counter[str]) -> None:
        """The lead's waiting actions: through its index, and by reading the items (an index can be stale)."""
        zkey, hkey = f"{self.prefix}schedule", f"{self.prefix}schedule:items"
        index = f"{self.prefix}schedule:lead:{lead}"
        action_ids = {_text(a) for a in await self.redis.hkeys(index)}
        async for field, value in self.redis.hscan_iter(hkey, count=SCAN_COUNT):
            try:
                if orjson.loads(value)["action"]["lead_id"] == lead:
                    action_ids.add(_text(field))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
        if action_ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(zkey, *action_ids)
                pipe.hdel(hkey, *action_ids)
                _, removed = await pipe.execute()
            counts["schedule"] += int(removed)

    async def _changes(self, leads: set[str], counts: Counter[str]) -> None:
        """The assignment outbox stream: its entries name the lead (the relay has published them already)."""
        stream = f"{self.assign_prefix}changes"
        doomed: list[Any] = []
        last = "-"
        while True:
            entries: list[Any] = await self.redis.xrange(stream, min=last, max="+", count=1000) or []
            if last != "-":
                entries = entries[1:]
            if not entries:
                break
            for entry_id, fields in entries:
                lead = (fields or {}).get(b"lead", (fields or {}).get("lead"))
                if lead is not None and _text(lead) in leads:
                    doomed.append(entry_id)
            last = _text(entries[-1][0])
        for start in range(0, len(doomed), 500):
            counts["assignment_changes"] += int(await self.redis.xdel(stream, *doomed[start : start + 500]))

    async def _scan(self, leads: set[str], counts: Counter[str]) -> None:
        """One pass over the keyspace: aliases whose value is one of `leads`, and every key named after one."""
        aliases: list[str] = []
        doomed: list[tuple[str, str]] = []
        endings = {f":{lead}": lead for lead in leads if lead not in SHARED_NAMES}
        async for raw in self.redis.scan_iter(count=SCAN_COUNT):
            key = _text(raw)
            if key.startswith(SEEN_PREFIX) and any(lead in key[len(SEEN_PREFIX) :] for lead in leads):
                doomed.append((key, "dedupe"))  # a message id made from the lead id (`cart-<user>-1`)
                continue
            kind = self._kind_of(key, endings)
            if kind is not None:
                doomed.append((key, kind))
            elif key.startswith((ALIAS_PREFIX, CLIENT_ALIAS_PREFIX)):
                aliases.append(key)
        for start in range(0, len(aliases), 500):
            chunk = aliases[start : start + 500]
            for key, value in zip(chunk, await self.redis.mget(chunk), strict=True):
                if value is not None and _text(value) in leads:
                    doomed.append((key, "aliases"))
        for key, kind in doomed:
            counts[kind] += int(await self.redis.delete(key))

    def _kind_of(self, key: str, endings: dict[str, str]) -> str | None:
        """What kind of per-lead key `key` is, when it is named after one of the leads; else None."""
        for ending, lead in endings.items():
            if not key.endswith(ending):
                continue
            if key == PROFILE_PREFIX + lead:
                return "profile"
            if key in (ALIAS_PREFIX + lead, CLIENT_ALIAS_PREFIX + lead):
                return "aliases"
            if key == KNOWN_PREFIX + lead:
                return "known"
            if key == f"{self.prefix}recheck:{lead}":
                return "recheck"
            if key == f"{self.prefix}schedule:lead:{lead}":
                return "schedule"
            if key.startswith(f"{self.prefix}cap:"):
                return "caps"
            if key.startswith(self.assign_prefix):
                return "assignment"
            if key.startswith("nudge:privacy:"):
                return None  # the pipeline's own bookkeeping names requests, never leads
            return "other"
        return None
