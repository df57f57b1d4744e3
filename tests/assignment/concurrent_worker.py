"""One OS process of the concurrency test: assigns a list of leads against shared Redis, reports what it got.

Run as `python -m tests.assignment.concurrent_worker SPEC_JSON`; SPEC has redis_url, roster (path), leads,
start_at (epoch seconds: every process waits for the same instant, so they really run at the same time),
now_s (the fixed clock), strategy (optional) and concurrency (assign calls in flight in this process).
Prints one JSON line: {"owners": {lead: rep}, "retries": n, "seconds": s}.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import redis.asyncio as aioredis

from engine.assignment import Assigner, load_roster


async def main(spec: dict) -> dict:
    client = aioredis.Redis.from_url(spec["redis_url"])
    roster = load_roster(spec["roster"])
    assigner = Assigner(client, roster, strategy=spec.get("strategy"), clock=lambda: spec["now_s"])
    owners: dict[str, str | None] = {}
    queue = list(spec["leads"])
    await client.ping()  # connect before the start line, so both processes start on equal terms

    async def drain() -> None:
        while queue:
            lead_id = queue.pop(0)
            assignment = await assigner.assign(lead_id, {"traits": {"country": "FR"}})
            owners[lead_id] = assignment.rep_id if assignment else None

    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    started = time.perf_counter()
    await asyncio.gather(*(drain() for _ in range(spec["concurrency"])))
    seconds = time.perf_counter() - started
    await client.aclose()
    return {"owners": owners, "retries": assigner.retries, "seconds": seconds}


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(main(orjson.loads(sys.argv[1])))).decode())
