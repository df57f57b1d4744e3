"""Idempotency claims, frequency caps and the durable schedule against the real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from engine.dispatch.policies.caps import CapRule, FrequencyCaps
from engine.dispatch.policies.idempotency import ClaimStatus, IdempotencyConfig, IdempotencyStore
from engine.dispatch.schedule import Schedule, ScheduledDelivery
from tests.connectors.helpers import make_action

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_claims(redis: Redis) -> None:
    store = IdempotencyStore(redis, "t:", IdempotencyConfig(claim_ttl_s=5, done_ttl_s=60))
    first = await store.claim("a1")
    assert first.status is ClaimStatus.CLAIMED
    held = await store.claim("a1")
    assert held.status is ClaimStatus.HELD and 4000 < held.held_for_ms <= 5000
    await store.release("a1", "not-my-token")  # someone else's release does nothing
    assert (await store.claim("a1")).status is ClaimStatus.HELD
    await store.release("a1", first.token)
    again = await store.claim("a1")
    assert again.status is ClaimStatus.CLAIMED
    await store.mark_done("a1")
    assert (await store.claim("a1")).status is ClaimStatus.DONE
    assert 59_000 < await redis.pttl("t:idem:a1") <= 60_000


async def test_caps_rolling_window_and_reservations(redis: Redis) -> None:
    caps = FrequencyCaps(redis, "t:", [CapRule(connector="email", max=2, per="1s")])
    a, b, c = (make_action("email", lead_id="L") for _ in range(3))
    assert await caps.reserve(a, "email", 1_000) is None
    assert await caps.reserve(b, "email", 1_200) is None
    assert await caps.reserve(c, "email", 1_500) == 2_000  # free when a (t=1000) leaves the window
    assert await caps.reserve(a, "email", 1_600) is None  # same id again: no second slot
    assert (
        await caps.reserve(make_action("webhook", lead_id="L"), "webhook", 1_600) is None
    )  # other connector
    assert await caps.reserve(make_action("email", lead_id="other"), "email", 1_600) is None  # other lead
    assert await caps.reserve(make_action("email", lead_id="L", marketing=False), "email", 1_600) is None
    await caps.release(b, "email")
    assert await caps.reserve(c, "email", 1_700) is None
    # At 2100, a (t=1000) has left the window; c (1700) and d (2100) fill it until c leaves at 2700.
    assert await caps.reserve(make_action("email", lead_id="L"), "email", 2_100) is None
    assert await caps.reserve(make_action("email", lead_id="L"), "email", 2_200) == 2_700


async def test_schedule_put_lease_remove(redis: Redis) -> None:
    schedule = Schedule(redis, "t:")
    action = make_action("webhook")
    entry = ScheduledDelivery(action, 1, "retry", "http_500", due_ms=1_000, emitted_ms=900)
    assert await schedule.put(entry)
    assert not await schedule.put(entry, only_if_absent=True)
    assert await schedule.lease_due(999, 10, 5_000) == []
    leased = await schedule.lease_due(1_000, 10, 5_000)
    assert leased == [entry]
    assert await schedule.lease_due(1_001, 10, 5_000) == []  # leased: not handed out twice
    assert await schedule.next_due_ms() == 6_000  # comes due again if the holder dies
    await schedule.remove(action.action_id)
    assert await schedule.size() == 0
