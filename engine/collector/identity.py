"""Identity at the collector: lead profiles (traits), known users, and the merges that map one id to another, in
Redis, with the trust rules of `engine.collector.trust`. Lua scripts make each read-modify-write atomic; all keys
of one script are on one Redis (not cluster-slot safe)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

import orjson
from redis.asyncio import Redis

from engine.collector.trust import Auth, is_protected
from engine.events import TRUST_MARKER, Event

PROFILE_PREFIX = "nudge:profile:"
ALIAS_PREFIX = "nudge:alias:"  # merges made with a server key: followed for every event
CLIENT_ALIAS_PREFIX = "nudge:client-alias:"  # merges made from a browser: followed for anonymous events only
KNOWN_PREFIX = "nudge:known:"  # ids a browser event may never merge away (see `IdentityStore`)
PROFILE_TTL_S = 400 * 24 * 3600  # longer than analytics.js keeps its anonymous-id cookie (one year)
MAX_PROFILE_FIELDS = 500
MAX_ALIAS_HOPS = 5
UPDATED_AT = "_updated_at_ms"

# KEYS[1] profile; ARGV: event time, ttl s, max fields, then name/value pairs. Returns the fields left out.
_APPLY_TRAITS = """
local stored = tonumber(redis.call('HGET', KEYS[1], '_updated_at_ms') or '-1')
local ts = tonumber(ARGV[1])
local newer = ts >= stored
local room = tonumber(ARGV[3]) - redis.call('HLEN', KEYS[1])
if stored == -1 then room = room - 1 end
local dropped = 0
for i = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    if newer then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  elseif room > 0 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    room = room - 1
  else
    dropped = dropped + 1
  end
end
if newer then redis.call('HSET', KEYS[1], '_updated_at_ms', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return dropped
"""

# KEYS[1] source profile, KEYS[2] target profile; ARGV: ttl s, max fields. Returns the fields left out.
_MERGE_PROFILE = """
local src = redis.call('HGETALL', KEYS[1])
local room = tonumber(ARGV[2]) - redis.call('HLEN', KEYS[2])
local dropped = 0
for i = 1, #src, 2 do
  if src[i] ~= '_updated_at_ms' and redis.call('HEXISTS', KEYS[2], src[i]) == 0 then
    if room > 0 then
      redis.call('HSET', KEYS[2], src[i], src[i + 1])
      room = room - 1
    else
      dropped = dropped + 1
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return dropped
"""


def profile_key(lead_id: str) -> str:
    return PROFILE_PREFIX + lead_id


def alias_key(lead_id: str) -> str:
    return ALIAS_PREFIX + lead_id


def client_alias_key(lead_id: str) -> str:
    return CLIENT_ALIAS_PREFIX + lead_id


def known_key(lead_id: str) -> str:
    return KNOWN_PREFIX + lead_id


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


def auth_of(event: Event) -> Auth:
    """What the event's sender proved, from the collector's mark (`context.nudge.auth`); an unmarked event was
    not received by a collector (a test, a direct producer) and speaks as a server."""
    marker = event.context.get(TRUST_MARKER)
    try:
        return Auth(marker.get("auth")) if isinstance(marker, dict) else Auth.SERVER
    except ValueError:
        return Auth.SERVER


def trait_value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def read_profile(raw: Mapping[Any, Any]) -> dict[str, Any]:
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


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class MergeRefusal(Enum):
    """Why a browser event may not merge its `from` id into its `to` id."""

    KNOWN = "known_lead"  # `from` is a known lead: merging would take over someone's identity
    CLAIMED = "claimed"  # `from` was merged into another user before, and nothing proves this is that person


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """What `IdentityStore.record` did that the metrics count: profile fields left out by the cap, per event."""

    capped: list[Event]


class IdentityStore:
    """Resolves lead ids through recorded merges, guards and records merges, applies identify traits to profiles.

    Profile: `identify` traits go to the hash `nudge:profile:{lead}` (`profile_key`): string traits as-is, other
    values as JSON text, plus `_updated_at_ms` (event time of the newest identify applied). An identify older than
    the stored one only fills fields that are missing, so replays and late retries never overwrite newer traits
    (event times are bounded by the receive time at the edge, so a far-future timestamp cannot lock a profile).
    At most `max_fields` fields per profile (new fields past it are left out and counted; existing ones still
    update); every write sets the profile to expire `ttl_s` after it (a sliding TTL). Browser events arrive here
    with their protected traits already moved under `unverified` (`engine.collector.trust.mark`).

    Known leads: `nudge:known:{id}` (`known_key`, sliding `ttl_s`) marks every id seen as a `userId`, and every
    lead a trusted event gave an email, phone or consent trait. A browser event never merges a known lead into
    another (`guard`).

    Merges: an `alias` (`previousId` → `userId`) or an `identify` carrying both `anonymousId` and `userId` records
    `from` → `to` and copies the old profile's fields the new one lacks. Made with a server key, the mapping is
    `nudge:alias:{from}` (`alias_key`) and applies to every later event of `from`; made by a browser (whose `from`
    is, by the guard, an anonymous id no known user owns), it is `nudge:client-alias:{from}`
    (`client_alias_key`) and applies only to events that carry no `userId`, so no browser can redirect the
    events of a user id, even one that does not exist yet. The latest merge wins (a shared device).

    Redis errors propagate to the caller.
    """

    def __init__(self, redis: Redis, *, ttl_s: int = PROFILE_TTL_S, max_fields: int = MAX_PROFILE_FIELDS) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_fields = max_fields
        self._apply_traits = redis.register_script(_APPLY_TRAITS)
        self._merge_profile = redis.register_script(_MERGE_PROFILE)

    async def guard(self, events: list[Event]) -> dict[str, MergeRefusal]:
        """The merges of browser events that must not happen, by message id; `events` are already marked.

        A merge `from` → `to` by a browser event is refused when `from` is a known lead (recorded, or a `userId`
        in this very request): `KNOWN`, even with a valid user hash (it proves who `to` is, not who `from` is);
        or when `from` is mapped to another id than `to` (recorded, or by an earlier merge in this request) and
        the event has no valid user hash for `to`: `CLAIMED`. Server-key merges are never refused. Reads Redis
        only when the request has browser merges."""
        wanted = [(e, m) for e in events if (m := merge_of(e)) and auth_of(e) is not Auth.SERVER]
        if not wanted:
            return {}
        sources = sorted({source for _, (source, _) in wanted})
        keys = [k for s in sources for k in (known_key(s), alias_key(s), client_alias_key(s))]
        values = await self._redis.mget(keys)
        known = {s for s, v in zip(sources, values[0::3], strict=True) if v is not None}
        known |= {e.user_id for e in events if e.user_id}
        owner: dict[str, str] = {}
        for source, server, client in zip(sources, values[1::3], values[2::3], strict=True):
            target = _text(server) or _text(client)
            if target:
                owner[source] = target
        refused: dict[str, MergeRefusal] = {}
        for event in events:  # in request order: an earlier merge of the request claims its id for the later ones
            merge = merge_of(event)
            if merge is None:
                continue
            source, target = merge
            auth = auth_of(event)
            if auth is not Auth.SERVER:
                claimed_by = owner.get(source)
                if source in known:
                    refused[event.message_id] = MergeRefusal.KNOWN
                    continue
                if claimed_by not in (None, target) and auth is not Auth.USER_HASH:
                    refused[event.message_id] = MergeRefusal.CLAIMED
                    continue
            owner[source] = target
        return refused

    async def _lookup(self, prefix: str, ids: Iterable[str]) -> dict[str, str]:
        ordered = sorted(set(ids))
        if not ordered:
            return {}
        values = await self._redis.mget([prefix + i for i in ordered])
        return {i: text for i, v in zip(ordered, values, strict=True) if (text := _text(v))}

    async def resolve(self, user_ids: set[str], pending: dict[str, str]) -> dict[str, str]:
        """Canonical id of each user id through server merges: request-local ones (`pending`) first, then
        recorded ones, hop by hop, at most `MAX_ALIAS_HOPS` (a cycle stops there too)."""
        canonical = {lead: lead for lead in user_ids}
        known: dict[str, str] = dict(pending)
        frontier = set(user_ids)
        for _ in range(MAX_ALIAS_HOPS):
            known.update(await self._lookup(ALIAS_PREFIX, {i for i in frontier if i not in known}))
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
        """Events with their lead ids replaced by the canonical ids, through the merges of the request and the
        recorded ones: an event with a `userId` follows server merges of that id; an event with only an
        `anonymousId` first follows its own merge (a server one, else a browser one), then server merges of the
        id it led to. A re-keyed event gets `userId` (and so the lead id and the Kafka key) set to the canonical
        id; `anonymousId` is kept. Merges from the same request apply to all its events, also those before the
        identify, because they are the same person and the worker may process partitions in any order. `alias`
        events are never re-keyed: they are the merge instruction itself. The identify/alias event itself is
        produced unchanged apart from re-keying, so the worker sees both ids and merges the old lead's state.
        Pass only merges that `guard` let through."""
        server_pending: dict[str, str] = {}
        client_pending: dict[str, str] = {}
        for event in events:
            merge = merge_of(event)
            if merge:
                (server_pending if auth_of(event) is Auth.SERVER else client_pending)[merge[0]] = merge[1]
        moving = [e for e in events if e.type != "alias"]
        anonymous = {e.lead_id for e in moving if not e.user_id}
        first: dict[str, str] = {}
        if anonymous:
            server = await self._lookup(ALIAS_PREFIX, anonymous - server_pending.keys())
            client = await self._lookup(CLIENT_ALIAS_PREFIX, anonymous - server_pending.keys() - client_pending.keys())
            for lead in anonymous:
                first[lead] = (
                    server_pending.get(lead) or server.get(lead) or client_pending.get(lead) or client.get(lead) or lead
                )
        users = {e.lead_id for e in moving if e.user_id} | {t for a, t in first.items() if t != a}
        canonical = await self.resolve(users, server_pending)
        out: list[Event] = []
        for event in events:
            target = event.lead_id
            if event.type != "alias":
                start = first.get(target, target) if not event.user_id else target
                target = canonical.get(start, start)
            if target == event.lead_id:
                out.append(event)
            else:
                out.append(dataclasses.replace(event, user_id=target, lead_id=target))
        return out

    async def record(self, events: list[Event]) -> Recorded:
        """After the broker acknowledged `events` (guarded and re-keyed): known leads, identify traits and merges,
        in event order, in one pipeline."""
        pipe = self._redis.pipeline(transaction=False)
        capped_at: list[tuple[int, Event]] = []
        known: set[str] = set()
        for event in events:
            if event.user_id:
                known.add(event.user_id)
            if event.trusted and any(is_protected(name) for name in event.traits):
                known.add(event.lead_id)
            if event.type == "identify" and event.traits:
                args: list[Any] = [event.timestamp_ms, self._ttl_s, self._max_fields]
                for name, value in event.traits.items():
                    args += [name, trait_value(value)]
                await self._apply_traits(keys=[profile_key(event.lead_id)], args=args, client=pipe)
                capped_at.append((len(pipe), event))
            merge = merge_of(event)
            if merge:
                source, target = merge
                key = alias_key(source) if auth_of(event) is Auth.SERVER else client_alias_key(source)
                pipe.set(key, target, ex=self._ttl_s)
                await self._merge_profile(
                    keys=[profile_key(source), profile_key(target)], args=[self._ttl_s, self._max_fields], client=pipe
                )
                capped_at.append((len(pipe), event))
        for lead in sorted(known):
            pipe.set(known_key(lead), 1, ex=self._ttl_s)
        if not len(pipe):
            return Recorded([])
        results = await pipe.execute()
        capped = {id(event): event for position, event in capped_at if results[position - 1]}
        return Recorded(list(capped.values()))

    async def profile(self, lead_id: str) -> dict[str, Any]:
        return read_profile(await self._redis.hgetall(profile_key(lead_id)))
