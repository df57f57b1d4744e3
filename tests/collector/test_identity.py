"""Identity against a real Redis: re-keying through merges, trait storage by event time, profile merges."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from engine.collector.identity import IdentityStore, alias_key, profile_key
from engine.events import Event, parse_event

pytestmark = pytest.mark.integration

T0 = 1_795_000_000_000


def ev(kind: str, t: int = T0, **fields: object) -> Event:
    doc = {"type": kind, "timestamp": t, **fields}
    if kind == "track":
        doc.setdefault("event", "Viewed")
    return parse_event(doc)


@pytest.fixture
async def store(redis_url: str):
    client = aioredis.Redis.from_url(redis_url)
    yield IdentityStore(client), client
    await client.aclose()


async def test_rekey_follows_recorded_and_request_merges(store) -> None:
    identity, client = store
    await identity.record([ev("identify", userId="u1", anonymousId="a1")])
    await identity.record([ev("alias", previousId="u1", userId="u2")])
    assert await client.get(alias_key("a1")) == b"u1"
    # a1 → u1 → u2, followed hop by hop; unknown ids stay
    out = await identity.rekey(
        [ev("track", anonymousId="a1"), ev("track", userId="u1"), ev("page", userId="x")]
    )
    assert [(e.lead_id, e.user_id, e.anonymous_id) for e in out] == [
        ("u2", "u2", "a1"),
        ("u2", "u2", None),
        ("x", "x", None),
    ]
    # an identify later in the same request re-keys the events before it too; the alias itself never moves
    batch = [
        ev("track", anonymousId="a9"),
        ev("identify", userId="u9", anonymousId="a9"),
        ev("alias", previousId="a9", userId="u9"),
    ]
    out = await identity.rekey(batch)
    assert [e.lead_id for e in out] == ["u9", "u9", "u9"]
    assert out[2] is batch[2]


async def test_alias_cycle_does_not_loop(store) -> None:
    identity, _ = store
    await identity.record([ev("alias", previousId="p", userId="q"), ev("alias", previousId="q", userId="p")])
    (out,) = await identity.rekey([ev("track", userId="p")])
    assert out.lead_id in {"p", "q"}


async def test_traits_newest_identify_wins_and_merge_fills_missing(store) -> None:
    identity, client = store
    await identity.record([ev("identify", t=T0 + 10, userId="u", traits={"email": "new@x.io", "age": 30})])
    await identity.record([ev("identify", t=T0, userId="u", traits={"email": "old@x.io", "phone": "+33"})])
    profile = await identity.profile("u")
    assert profile == {"email": "new@x.io", "age": 30, "phone": "+33", "_updated_at_ms": T0 + 10}
    await identity.record([ev("identify", anonymousId="a", traits={"email": "anon@x.io", "timezone": "UTC"})])
    await identity.record([ev("identify", t=T0 + 20, userId="u", anonymousId="a")])
    merged = await identity.profile("u")
    assert merged["email"] == "new@x.io" and merged["timezone"] == "UTC"
    assert await client.exists(profile_key("a"))  # the old profile is kept for audit
