"""Deduplicate SDK retries by `messageId` in Redis, without ever losing an event.

Contract — a two-phase claim per messageId (`engine.redis_claims`; key `nudge:seen:{messageId}`):
1. `claim(ids, token)` atomically sets each key to `pending:<token>` with a short TTL (`PENDING_TTL_S`) when
   it is absent, and reports every id as `fresh` (ours now), `duplicate` (already produced: value `done`) or
   `in_flight` (another request holds a pending claim).
2. After the broker acknowledged an event, `confirm(ids)` sets its key to `done` for `SEEN_TTL_S` (24 h: SDK
   retry windows are minutes). An event the broker did not acknowledge is `release`d (deleted only if still
   our own pending claim), so the SDK's retry produces it.
A request that meets an `in_flight` id answers 503 and lets the SDK retry, rather than 200 for an event that may
still fail. If the collector dies between claim and confirm, the pending claim expires after `PENDING_TTL_S`
and retries get through. Redis errors propagate (`redis.RedisError`); the caller turns them into 503.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from engine.redis_claims import DONE, ClaimStatus, TwoPhaseClaims

SEEN_TTL_S = 24 * 3600
PENDING_TTL_S = 60
KEY_PREFIX = "nudge:seen:"

__all__ = ["DONE", "KEY_PREFIX", "PENDING_TTL_S", "SEEN_TTL_S", "Claim", "MessageDeduper", "seen_key"]


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
        self._claims = TwoPhaseClaims(redis, pending_ttl_ms=pending_ttl_s * 1000, done_ttl_ms=seen_ttl_s * 1000)

    async def claim(self, message_ids: list[str], token: str) -> Claim:
        claim = Claim(token)
        found = await self._claims.claim([seen_key(m) for m in message_ids], f"pending:{token}")
        for message_id, key_claim in zip(message_ids, found, strict=True):
            if key_claim.status is ClaimStatus.CLAIMED:
                claim.fresh.append(message_id)
            elif key_claim.status is ClaimStatus.DONE:
                claim.duplicate.append(message_id)
            else:
                claim.in_flight.append(message_id)
        return claim

    async def confirm(self, message_ids: Iterable[str]) -> None:
        await self._claims.confirm([seen_key(m) for m in message_ids])

    async def release(self, message_ids: Iterable[str], token: str) -> None:
        await self._claims.release([seen_key(m) for m in message_ids], f"pending:{token}")
