"""Two-phase claims in Redis: "this is mine to do now" first, "this is done" after it was done.

Used wherever something must happen at most once although it can arrive more than once: the collector's
messageIds (engine/collector/dedupe.py) and the dispatcher's action ids (engine/dispatch/policies/idempotency.py).
Each caller keeps its own key names and claim values (deployed data); this module owns the protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

DONE = "done"

# KEYS: the claim keys. ARGV[1]: our pending value, ARGV[2]: its TTL (ms), ARGV[3]: the done value.
# Per key {status, ms}: {1, 0} claimed by us, {2, 0} done before, {3, PTTL} held by another pending claim.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = {1, 0}
  elseif redis.call('GET', key) == ARGV[3] then
    out[i] = {2, 0}
  else
    out[i] = {3, redis.call('PTTL', key)}
  end
end
return out
"""

_CONFIRM = """
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return #KEYS
"""

_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key); n = n + 1 end
end
return n
"""


class ClaimStatus(enum.Enum):
    """What a claim found: the key is ours now, was done before, or is held by another pending claim."""

    CLAIMED = 1
    DONE = 2
    HELD = 3


@dataclass(frozen=True)
class KeyClaim:
    """One key's claim; `held_for_ms` is how long another holder's claim still lives (HELD only)."""

    status: ClaimStatus
    held_for_ms: int = 0


class TwoPhaseClaims:
    """Claim, confirm and release keys in Redis, each step one atomic Lua script over any number of keys.

    Contract:
    - `claim(keys, pending)` sets every absent key to `pending` for `pending_ttl_ms` and reports per key:
      CLAIMED (ours now: do the work), DONE (confirmed before: do nothing), or HELD (another claim is pending:
      its owner is working on it, or died and the claim expires after `held_for_ms`).
    - `confirm(keys)` marks keys done for `done_ttl_ms` (how long repeats are recognised), whoever held them.
    - `release(keys, pending)` deletes the keys that still hold our `pending` value, so a later attempt can
      claim them; a claim that is not ours any more (our TTL ran out, someone else claimed) is left alone.
    - Why two phases: marking done before doing the work would lose it when the work fails; marking only
      after would let two concurrent copies both do it. A crash between claim and confirm costs one
      `pending_ttl_ms`, after which the key can be claimed again.
    Redis errors propagate (`redis.RedisError`).
    """

    def __init__(self, redis: Redis, *, pending_ttl_ms: int, done_ttl_ms: int) -> None:
        self.redis = redis
        self.pending_ttl_ms = pending_ttl_ms
        self.done_ttl_ms = done_ttl_ms
        self._claim = redis.register_script(_CLAIM)
        self._confirm = redis.register_script(_CONFIRM)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, keys: Sequence[str], pending: str) -> list[KeyClaim]:
        if not keys:
            return []
        found = await self._claim(keys=list(keys), args=[pending, self.pending_ttl_ms, DONE])
        claims = []
        for status, ttl in found:
            state = ClaimStatus(int(status))
            # PTTL -1 (no expiry) cannot happen for these keys; treat it like a fresh claim's TTL.
            held = (int(ttl) if int(ttl) > 0 else self.pending_ttl_ms) if state is ClaimStatus.HELD else 0
            claims.append(KeyClaim(state, held))
        return claims

    async def confirm(self, keys: Sequence[str]) -> None:
        if keys:
            await self._confirm(keys=list(keys), args=[DONE, self.done_ttl_ms])

    async def release(self, keys: Sequence[str], pending: str) -> None:
        if keys:
            await self._release(keys=list(keys), args=[pending])

    async def is_done(self, key: str) -> bool:
        return await self.redis.get(key) == DONE.encode()
