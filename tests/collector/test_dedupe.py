"""The messageId claim protocol against a real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from engine.collector.dedupe import MessageDeduper, seen_key

pytestmark = pytest.mark.integration


async def test_claim_confirm_release_and_in_flight(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        dedupe = MessageDeduper(client, seen_ttl_s=3600, pending_ttl_s=30)
        first = await dedupe.claim(["a", "b", "c"], "req-1")
        assert (first.fresh, first.duplicate, first.in_flight) == (["a", "b", "c"], [], [])
        # a concurrent copy of the request must not produce, nor be told "done"
        racing = await dedupe.claim(["a", "d"], "req-2")
        assert (racing.fresh, racing.in_flight) == (["d"], ["a"])
        await dedupe.release(racing.fresh, "req-2")
        # req-1: a and b acknowledged, c failed
        await dedupe.confirm(["a", "b"])
        await dedupe.release(["c"], "req-1")
        await dedupe.release(["a"], "req-2")  # not its claim: no effect
        retry = await dedupe.claim(["a", "b", "c", "d"], "req-3")
        assert (retry.fresh, retry.duplicate, retry.in_flight) == (["c", "d"], ["a", "b"], [])
        assert 3500 < await client.ttl(seen_key("a")) <= 3600
        assert 0 < await client.ttl(seen_key("c")) <= 30  # a pending claim expires if its owner dies
    finally:
        await client.aclose()
