"""`nudge_redis_memory_used_ratio` from a real Redis started here with a password and a `maxmemory`, as in
docker-compose.yml: the ratio follows the data, names its limit, and a Redis that goes away clears the gauge
without stopping the poller."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis import exceptions as redis_errors

from engine.devstack import free_port, wait_for_port
from engine.dispatch.redis_memory import poll_once, used_ratio, watch_redis_memory

pytestmark = pytest.mark.integration
PASSWORD = "redis-test-password-0123456789abcdef"


def samples() -> dict[str, float]:
    return {
        sample.labels["limit"]: sample.value
        for family in REGISTRY.collect()
        if family.name == "nudge_redis_memory_used_ratio"
        for sample in family.samples
    }


@pytest.fixture
def redis_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        pytest.skip("redis-server not installed (make install)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", PASSWORD, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for_port(port), "redis-server did not start"
        yield server, f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_ratio_is_relative_to_maxmemory_or_else_the_host() -> None:
    assert used_ratio({"used_memory": 50, "maxmemory": 200, "total_system_memory": 1000}) == ("maxmemory", 0.25)
    assert used_ratio({"used_memory": 50, "maxmemory": 0, "total_system_memory": 1000}) == ("system", 0.05)
    assert used_ratio({"used_memory": 50}) is None


async def test_the_gauge_follows_a_real_redis(redis_server: tuple[subprocess.Popen[bytes], str]) -> None:
    server, url = redis_server
    client = aioredis.Redis.from_url(url)
    try:
        limit, before = await poll_once(client) or ("", 0.0)
        assert limit == "maxmemory" and 0 < before < 0.2
        for i in range(64):  # 16 MiB: a quarter of the 64 MiB limit
            await client.set(f"k{i}", b"x" * (256 * 1024))
        _, after = await poll_once(client) or ("", 0.0)
        assert 0.2 < after - before < 0.4  # allocator rounding and key overhead on top of the values
        assert samples() == {"maxmemory": after}

        await client.config_set("maxmemory", 0)  # no limit: relative to the host, and only that series is left
        limit, _ = await poll_once(client) or ("", 0.0)
        assert limit == "system" and set(samples()) == {"system"}

        server.terminate()
        server.wait(timeout=10)
        with pytest.raises(redis_errors.ConnectionError):
            await poll_once(client)
        assert samples() == {}  # nothing stale
        watcher = asyncio.create_task(watch_redis_memory(client, interval_s=0.05))
        await asyncio.sleep(0.3)
        assert not watcher.done(), "the poller must survive an unreachable Redis"
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    finally:
        await client.aclose()
