"""Every Redis key of a lead goes (engine/privacy/redis_erasure.py), checked with a full SCAN dump of a real Redis:
collector keys (profile, merges both ways, known mark, dedupe claims), dispatcher keys (schedule, idempotency,
caps by lead and by recipient, re-check), assignment (owner with the rep's load released, queue, history, SLA,
the outbox stream); another lead's keys stay."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from engine.assignment.store import PREFIX as A
from engine.privacy.identities import all_ids, connected
from engine.privacy.redis_erasure import RedisEraser, dispatch_prefix

APP = "shop"
P = dispatch_prefix(APP)


async def populate(redis: aioredis.Redis, lead: str, anon: str, rep: str) -> None:
    await redis.hset(f"nudge:profile:{lead}", mapping={"email": f"{lead}@example.com"})
    await redis.hset(f"nudge:profile:{anon}", mapping={"plan": "free"})
    await redis.set(f"nudge:alias:{anon}", lead)
    await redis.set(f"nudge:known:{lead}", 1)
    await redis.set(f"nudge:seen:msg-{lead}-1", "done")
    item = {"action": {"action_id": f"act-{lead}", "lead_id": lead}, "attempts": 0, "why": "deferred", "due_ms": 1}
    await redis.zadd(f"{P}schedule", {f"act-{lead}": 1})
    await redis.hset(f"{P}schedule:items", f"act-{lead}", orjson.dumps(item))
    await redis.hset(f"{P}schedule:lead:{lead}", f"act-{lead}", "1|1|cart")
    await redis.set(f"{P}idem:act-{lead}", "done")
    await redis.zadd(f"{P}cap:0:email:{lead}", {f"act-{lead}": 1})
    await redis.zadd(f"{P}cap:1:email:rcpt:hash-{rep}", {f"act-{lead}": 1, f"act-keep-{rep}": 1})
    await redis.hset(f"{P}recheck:{lead}", "consent", "1|1|consent_given")
    await redis.hset(f"{A}owner:{lead}", mapping={"rep": rep, "assigned_at_ms": 1})
    await redis.hincrby(f"{A}loads", rep, 1)
    await redis.sadd(f"{A}leads:{rep}", lead)
    await redis.zadd(f"{A}sla", {lead: 5})
    await redis.rpush(f"{A}history:{lead}", orjson.dumps({"event": "assigned", "rep": rep}))
    await redis.xadd(f"{A}changes", {"lead": lead, "entry": "{}"})


async def dump(redis: aioredis.Redis) -> str:
    parts = []
    async for key in redis.scan_iter():
        kind = (await redis.type(key)).decode()
        value = {
            "string": redis.get, "hash": redis.hgetall, "set": redis.smembers, "stream": redis.xrange,
            "list": lambda k: redis.lrange(k, 0, -1), "zset": lambda k: redis.zrange(k, 0, -1),
        }[kind](key)  # fmt: skip
        parts.append(f"{key!r} {await value!r}")
    return "\n".join(parts)


async def test_every_key_of_the_lead_goes_and_the_other_lead_stays(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await populate(redis, "gone-lead", "gone-anon", "rita")
        await populate(redis, "kept-lead", "kept-anon", "sam")
        assert await all_ids(redis, "gone-lead") == ["gone-lead", "gone-anon"]
        eraser = RedisEraser(redis, APP)
        counts = await eraser.erase(["gone-lead", "gone-anon"])
        by_action = await eraser.erase_action_keys(["act-gone-lead"])
        text = await dump(redis)
        assert "gone-" not in text, text
        assert "kept-lead" in text and "kept-anon" in text
        assert await redis.hget(f"{A}loads", "rita") == b"0"  # the rep's load released
        assert await redis.hget(f"{A}loads", "sam") == b"1"
        assert counts["profile"] == 2 and counts["aliases"] == 1 and counts["assignment"] == 1
        assert counts["schedule"] >= 1 and counts["caps"] == 1  # the lead's own counting set
        assert by_action == {"idempotency": 1, "caps": 1}  # its slot in the recipient's set
        assert counts["dedupe"] == 1 and counts["recheck"] == 1 and counts["assignment_changes"] == 1
        again = await eraser.erase(["gone-lead", "gone-anon"])
        assert sum(again.values()) == 0  # idempotent
    finally:
        await redis.aclose()


def test_ids_connect_through_merges_both_ways_and_stop_at_the_cap() -> None:
    edges = [("a1", "u1"), ("a2", "u1"), ("u1", "u2"), ("x", "y")]
    assert connected(["u1"], edges) == ["u1", "a1", "a2", "u2"]
    assert connected(["a1"], edges) == ["a1", "a2", "u1", "u2"]
    assert connected(["nobody"], edges) == ["nobody"]
    chain = [(f"n{i}", f"n{i + 1}") for i in range(50)]
    assert len(connected(["n0"], chain, limit=10)) <= 12
