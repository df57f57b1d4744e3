"""Helpers for the assignment tests: rosters built in code and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.assignment.roster import Rep, Roster, SlaPolicy

# Wednesday 2026-11-25 12:00 UTC: 13:00 in Paris (working), 21:00 in Tokyo (off hours).
WEDNESDAY_NOON_UTC = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()


class ManualClock:
    """Epoch seconds that only move when the test says so."""

    def __init__(self, now_s: float = WEDNESDAY_NOON_UTC) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def rep(rep_id: str, **fields: Any) -> Rep:
    card = {"name": rep_id.title(), "email": f"{rep_id}@example.com", "slack_id": f"U{rep_id.upper()}"}
    return Rep(id=rep_id, **{**card, **fields})


def roster(*reps: Rep, ack_within_s: float = 600, max_reassignments: int = 3, **fields: Any) -> Roster:
    sla = SlaPolicy(ack_within_s=ack_within_s, max_reassignments=max_reassignments)
    return Roster(reps=reps, sla=sla, **fields)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
