"""Idempotency claims in Redis: an action id is sent at most once, even when redelivered or replayed.

Contract (a two-phase claim, `engine.redis_claims`; key `<prefix>idem:<action_id>`):
- `claim(action_id)` does `SET key <token> NX PX claim_ttl`: `CLAIMED` (we may send), `DONE` (already sent:
  the action is a duplicate), or `HELD` with the milliseconds the other claim still lives (another dispatcher
  is sending it right now, or one crashed mid-send: check again when the claim expires).
- `mark_done(action_id)` after the peer accepted: the key becomes `done` for `done_ttl` (how long replays are
  recognised; longer than any replay window you use).
- `release(action_id, token)` drops our own claim when the action was not sent (deferred, retry scheduled,
  failed), so a later attempt can claim it; a claim that is not ours (our TTL ran out) is left alone.
- A crash between claim and mark leaves a claim that expires after `claim_ttl`; the redelivered action is then
  claimed again and sent. If the crash came after the peer accepted, the peer sees the same id twice
  (at-least-once to the peer; it dedupes by the id we send). `claim_ttl` must exceed the longest send (the
  loader checks it against every connector's timeout).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from engine.redis_claims import ClaimStatus, TwoPhaseClaims

__all__ = ["Claim", "ClaimStatus", "IdempotencyConfig", "IdempotencyStore"]


class IdempotencyConfig(BaseModel):
    """`policies.idempotency`: claim and done TTLs."""

    model_config = ConfigDict(extra="forbid")

    claim_ttl_s: float = Field(60.0, gt=0, description="how long a claim blocks others; > the longest send")
    done_ttl_s: float = Field(7 * 86400.0, gt=0, description="how long a sent action id is remembered")


@dataclass(frozen=True)
class Claim:
    """A claim's status; `token` identifies our claim, `held_for_ms` how long another one still lives."""

    status: ClaimStatus
    token: str = ""
    held_for_ms: int = 0


class IdempotencyStore:
    """Claims, marks and releases action ids in Redis (module docstring: the contract)."""

    def __init__(self, redis: Redis, prefix: str, config: IdempotencyConfig) -> None:
        self.redis = redis
        self.prefix = prefix
        self.config = config
        self._claims = TwoPhaseClaims(
            redis, pending_ttl_ms=int(config.claim_ttl_s * 1000), done_ttl_ms=int(config.done_ttl_s * 1000)
        )

    def key(self, action_id: str) -> str:
        return f"{self.prefix}idem:{action_id}"

    async def claim(self, action_id: str) -> Claim:
        token = uuid.uuid4().hex
        [found] = await self._claims.claim([self.key(action_id)], token)
        if found.status is ClaimStatus.CLAIMED:
            return Claim(found.status, token)
        return Claim(found.status, held_for_ms=found.held_for_ms)

    async def mark_done(self, action_id: str) -> None:
        await self._claims.confirm([self.key(action_id)])

    async def release(self, action_id: str, token: str) -> None:
        if token:
            await self._claims.release([self.key(action_id)], token)

    async def is_done(self, action_id: str) -> bool:
        return await self._claims.is_done(self.key(action_id))
