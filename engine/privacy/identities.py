"""Every id of one person: the id a request names plus every id merged into it or that it was merged into, read
from the collector's identity store (`engine.collector.identity`: server and browser merges, `nudge:alias:{old}` =
new and `nudge:client-alias:{old}` = new)."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from engine.collector.identity import ALIAS_PREFIX, CLIENT_ALIAS_PREFIX, MAX_ALIAS_HOPS, read_profile

SCAN_COUNT = 1000
EMAIL_TRAITS = ("email",)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def merge_graph(redis: Redis) -> list[tuple[str, str]]:
    """Every recorded merge (old id, new id), server and browser ones. One SCAN over the alias keys: an erasure is
    rare, and no reverse index of merges exists (the collector only ever follows them forwards)."""
    edges: list[tuple[str, str]] = []
    for prefix in (ALIAS_PREFIX, CLIENT_ALIAS_PREFIX):
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=SCAN_COUNT)]
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            values = await redis.mget(chunk)
            for key, value in zip(chunk, values, strict=True):
                target = _text(value)
                if target:
                    edges.append((_text(key)[len(prefix) :], target))  # type: ignore[index]
    return edges


def connected(start: Iterable[str], edges: list[tuple[str, str]], limit: int = 1000) -> list[str]:
    """The ids reachable from `start` over merges in either direction (the ids the named ones were merged into,
    and those merged into them), sorted, the named ones first. Stops at `limit` ids: a chain that long is not one
    person but a merge gone wrong, and erasing it whole would take others with it."""
    neighbours: dict[str, set[str]] = {}
    for old, new in edges:
        neighbours.setdefault(old, set()).add(new)
        neighbours.setdefault(new, set()).add(old)
    named = list(dict.fromkeys(start))
    seen = set(named)
    frontier = list(named)
    hops = 0
    while frontier and len(seen) < limit:
        hops += 1
        following = []
        for lead in frontier:
            for other in neighbours.get(lead, ()):
                if other not in seen:
                    seen.add(other)
                    following.append(other)
        frontier = following
        if hops > 10 * MAX_ALIAS_HOPS:
            break
    return named + sorted(seen - set(named))


async def all_ids(redis: Redis, lead_id: str) -> list[str]:
    """`lead_id` first, then every id merged with it (see `connected`)."""
    return connected([lead_id], await merge_graph(redis))


async def emails_of(redis: Redis, ids: Iterable[str]) -> list[str]:
    """The email addresses in the profiles of `ids` (including unverified ones a browser sent): searched for in
    dead letters, whose raw bytes may name the person by address only."""
    found: set[str] = set()
    for lead in ids:
        profile = read_profile(await redis.hgetall(f"nudge:profile:{lead}"))
        unverified = profile.get("unverified")
        for source in (profile, unverified if isinstance(unverified, dict) else {}):
            for name in EMAIL_TRAITS:
                value = source.get(name)
                if isinstance(value, str) and "@" in value:
                    found.add(value)
    return sorted(found)
