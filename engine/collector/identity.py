"""Identity at the collector: lead profiles (traits) and the anonymousId → userId mapping, in Redis. Lua scripts
make each read-modify-write atomic; all keys of one script are on one Redis (not cluster-slot safe)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from redis.asyncio import Redis

from engine.events import Event

PROFILE_PREFIX = "nudge:profile:"
ALIAS_PREFIX = "nudge:alias:"
ALIAS_TTL_S = 400 * 24 * 3600  # longer than analytics.js keeps its anonymous-id cookie (one year)
MAX_ALIAS_HOPS = 5

_APPLY_TRAITS = """
local stored = tonumber(redis.call('HGET', KEYS[1], '_updated_at_ms') or '-1')
local ts = tonumber(ARGV[1])
local newer = ts >= stored
for i = 2, #ARGV, 2 do
  if newer then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if newer then redis.call('HSET', KEYS[1], '_updated_at_ms', ARGV[1]) end
return newer and 1 or 0
"""

_MERGE_PROFILE = """
local src = redis.call('HGETALL', KEYS[1])
for i = 1, #src, 2 do
  if src[i] ~= '_updated_at_ms' then redis.call('HSETNX', KEYS[2], src[i], src[i + 1]) end
end
return #src / 2
"""


def profile_key(lead_id: str) -> str:
    return PROFILE_PREFIX + lead_id


def alias_key(lead_id: str) -> str:
    return ALIAS_PREFIX + lead_id


def merge_of(event: Event) -> tuple[str, str] | None:
    """(from_id, to_id) when the event merges one lead into another, else None."""
    if event.type == "alias" and event.previous_id and event.user_id and event.previous_id != event.user_id:
        return event.previous_id, event.user_id
    if (
        event.type == "identify"
        and event.anonymous_id
        and event.user_id
        and event.anonymous_id != event.user_id
    ):
        return event.anonymous_id, event.user_id
    return None


def trait_value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def read_profile(raw: dict[bytes, bytes] | dict[str, str]) -> dict[str, Any]:
    """Decode an HGETALL of a profile hash. Values that are JSON (objects, arrays, numbers, booleans) come
    back decoded, everything else as the stored string (so a string trait that looks like a number reads
    as a number)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        text = value.decode() if isinstance(value, bytes) else value
        try:
            out[name] = orjson.loads(text)
        except orjson.JSONDecodeError:
            out[name] = text
    return out


class IdentityStore:
    """Resolves lead ids through recorded merges, records merges and applies identify traits to profiles.

    Profile: `identify` traits go to the hash `nudge:profile:{lead}` (`profile_key`): string traits as-is, other
    values as JSON text, plus `_updated_at_ms` (event time of the newest identify applied). An identify older than
    the stored one only fills fields that are missing, so replays and late retries never overwrite newer traits.
    The fields connectors rely on: `email`, `name`, `firstName`, `lastName`, `phone`, `timezone`, `company`,
    `consent`.

    Merges: an `alias` (`previousId` → `userId`) or an `identify` carrying both `anonymousId` and `userId` records
    `nudge:alias:{fromId}` = `toId` (`alias_key`; the latest merge wins, e.g. a shared device) and copies the old
    profile's fields the new one lacks.

    Redis errors propagate to the caller.
    """

    def __init__(self, redis: Redis, *, alias_ttl_s: int = ALIAS_TTL_S) -> None:
        self._redis = redis
        self._alias_ttl_s = alias_ttl_s
        self._apply_traits = redis.register_script(_APPLY_TRAITS)
        self._merge_profile = redis.register_script(_MERGE_PROFILE)

    async def _lookup(self, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        ordered = sorted(ids)
        values = await self._redis.mget([alias_key(i) for i in ordered])
        return {
            i: (v.decode() if isinstance(v, bytes) else v) for i, v in zip(ordered, values, strict=True) if v
        }

    async def resolve(self, lead_ids: set[str], pending: dict[str, str]) -> dict[str, str]:
        """Canonical id of each lead id: request-local merges (`pending`) first, then recorded ones, hop by
        hop, at most `MAX_ALIAS_HOPS` (a cycle stops there too)."""
        canonical = {lead: lead for lead in lead_ids}
        known: dict[str, str] = dict(pending)
        frontier = set(lead_ids)
        for _ in range(MAX_ALIAS_HOPS):
            known.update(await self._lookup({i for i in frontier if i not in known}))
            moved = False
            next_frontier: set[str] = set()
            for lead, current in canonical.items():
                target = known.get(current)
                if target and target != lead and target != current:
                    canonical[lead] = target
                    next_frontier.add(target)
                    moved = True
            if not moved:
                break
            frontier = next_frontier
        return canonical

    async def rekey(self, events: list[Event]) -> list[Event]:
        """Events with their lead ids replaced by the canonical ids: every event whose lead id (userId, else
        anonymousId) has a recorded mapping gets `userId` (and so the lead id and the Kafka key) set to the mapped
        id; `anonymousId` is kept. Mappings from the same request apply to all its events, also those before the
        identify, because they are the same person and the worker may process partitions in any order. `alias`
        events are never re-keyed: they are the merge instruction itself. The identify/alias event itself is
        produced unchanged apart from re-keying, so the worker sees both ids and merges the old lead's state."""
        pending = dict(m for m in map(merge_of, events) if m)
        leads = {e.lead_id for e in events if e.type != "alias"}
        canonical = await self.resolve(leads, pending)
        out: list[Event] = []
        for event in events:
            target = canonical.get(event.lead_id, event.lead_id)
            if event.type == "alias" or target == event.lead_id:
                out.append(event)
            else:
                out.append(dataclasses.replace(event, user_id=target, lead_id=target))
        return out

    async def record(self, events: list[Event]) -> None:
        """After the broker acknowledged `events`: store identify traits and merges (in event order)."""
        for event in events:
            if event.type == "identify" and event.traits:
                args: list[Any] = [event.timestamp_ms]
                for name, value in event.traits.items():
                    args += [name, trait_value(value)]
                await self._apply_traits(keys=[profile_key(event.lead_id)], args=args)
            merge = merge_of(event)
            if merge:
                source, target = merge
                await self._redis.set(alias_key(source), target, ex=self._alias_ttl_s)
                await self._merge_profile(keys=[profile_key(source), profile_key(target)])

    async def profile(self, lead_id: str) -> dict[str, Any]:
        return read_profile(await self._redis.hgetall(profile_key(lead_id)))
