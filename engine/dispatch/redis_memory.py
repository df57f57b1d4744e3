"""Redis memory use as the gauge `nudge_redis_memory_used_ratio`, polled by the dispatcher (the one process that
always has Redis), so that `NudgeRedisMemoryHigh` fires before Redis refuses writes at `maxmemory`.

Nudge's Redis runs with `maxmemory-policy noeviction` (docs/deployment.md): evicting an idempotency claim or a
scheduled delivery would double or lose a message, so a full Redis refuses writes instead, and the collector, the
dispatcher and the assignment service fail. The gauge is how that is seen coming.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from engine.metrics import REDIS_MEMORY_USED_RATIO

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 15.0  # Prometheus scrapes every 15 s (deploy/prometheus.yml); INFO memory is O(1) for Redis


class _InfoClient(Protocol):
    async def info(self, section: str) -> dict[str, Any]: ...


def used_ratio(info: dict[str, Any]) -> tuple[str, float] | None:
    """(limit, ratio) from the fields of `INFO memory`: `used_memory / maxmemory`, or `used_memory /
    total_system_memory` with limit "system" when Redis has no `maxmemory` (it may then grow until the host runs
    out). None when neither limit is reported."""
    used = float(info.get("used_memory") or 0)
    maxmemory = float(info.get("maxmemory") or 0)
    if maxmemory > 0:
        return "maxmemory", used / maxmemory
    system = float(info.get("total_system_memory") or 0)
    return ("system", used / system) if system > 0 else None


async def poll_once(redis: _InfoClient) -> tuple[str, float] | None:
    """Read `INFO memory` and set the gauge (one series, labelled by the limit it is relative to). On any error
    the gauge is cleared, so a stale value cannot keep an alert firing or hide one, and the error is raised."""
    try:
        measured = used_ratio(await redis.info("memory"))
    except Exception:
        REDIS_MEMORY_USED_RATIO.clear()
        raise
    REDIS_MEMORY_USED_RATIO.clear()  # the limit may have changed (CONFIG SET maxmemory): keep one series
    if measured is not None:
        REDIS_MEMORY_USED_RATIO.labels(measured[0]).set(measured[1])
    return measured


async def watch_redis_memory(redis: _InfoClient, interval_s: float = POLL_INTERVAL_S) -> None:
    """Poll every `interval_s` until cancelled. Never returns and never raises anything but `CancelledError`: a
    Redis that cannot be read is logged (without its URL) and polled again next round."""
    while True:
        try:
            await poll_once(redis)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot read Redis memory use (%s); retrying in %.0fs", type(exc).__name__, interval_s)
        await asyncio.sleep(interval_s)
