"""Helpers for the assignment tests: rosters built in code, a clock the test moves by hand, and the reps web app
served on loopback (`serve_reps`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from engine.assignment import Assigner
from engine.assignment.auth import ApiToken, RepsAuth, Sessions
from engine.assignment.links import RepLinks
from engine.assignment.operations import RepOperations
from engine.assignment.roster import Rep, Roster, SlaPolicy
from engine.assignment.service import create_app
from engine.core.model import Action

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


def roster(
    *reps: Rep, ack_within_s: float = 600, max_reassignments: int = 3, queue_alert_after_s: float | None = 600,
    **fields: Any,
) -> Roster:
    sla = SlaPolicy(
        ack_within_s=ack_within_s, max_reassignments=max_reassignments, queue_alert_after_s=queue_alert_after_s
    )
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


TOKEN = "test-token-" + "x" * 32
SECRET = b"test-link-secret-" + b"s" * 32


@dataclass
class RepsWeb:
    """The reps web app (`service.create_app`) on loopback, with its assigner, links and the actions it would
    have produced (`sent`)."""

    base: str
    assigner: Assigner
    links: RepLinks
    sent: list[Action]
    app: web.Application

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def serve_reps(
    redis_client: aioredis.Redis, the_roster: Roster, clock: ManualClock, *, https: bool = False
) -> AsyncIterator[RepsWeb]:
    sent: list[Action] = []

    async def publish(actions: Sequence[Action]) -> None:
        sent.extend(actions)

    links = RepLinks(SECRET, "http://127.0.0.1", 3600, clock=clock)
    assigner = Assigner(redis_client, the_roster, clock=clock, links=links)
    auth = RepsAuth(ApiToken(TOKEN), Sessions(redis_client, 3600, key_id=links.key_id), the_roster, https)
    app = create_app(assigner, RepOperations(assigner, publish), links, auth)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    links.public_url = base
    try:
        yield RepsWeb(base, assigner, links, sent, app)
    finally:
        await runner.cleanup()
