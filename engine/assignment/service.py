"""The assignment service process (`nudge reps serve`): HTTP endpoints + the SLA monitor loop.

Contract:
- Serves `engine.assignment.api` routes plus `GET /metrics` and `GET /healthz` on one port.
- Every `interval_s` runs `SlaMonitor.run_once()`; each notification is produced to the `actions` topic
  (key = lead id, value = `Action.to_bytes()`) for the dispatcher to deliver, and each reassignment to
  `lead-updates` (`Assignment.lead_update()`). Produces wait for the broker's ack (acks=all).
- A notification whose produce fails after its reassignment committed is logged (with the lead id) and not
  retried: notifications are at most once, the reassignment itself exactly once (Lua, see `store`).
- Several service processes may run (e.g. one per host): the monitor acts on each breach once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer

from engine import metrics
from engine.assignment.api import add_routes
from engine.assignment.assigner import Assigner
from engine.assignment.model import Reassignment
from engine.assignment.roster import Roster
from engine.assignment.sla import SlaMonitor
from engine.config import Settings
from engine.kafka import topics
from engine.kafka.security import client_options

log = logging.getLogger(__name__)



class AssignmentService:
    """Owns one Redis client, one Kafka producer, the web app and the SLA loop; `start()` then `stop()`."""

    def __init__(
        self,
        settings: Settings,
        roster: Roster,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.assigner = Assigner(self.redis, roster, clock=clock)
        self.monitor = SlaMonitor(self.assigner)
        self.interval_s = interval_s
        self.producer: AIOKafkaProducer | None = None
        self.app = web.Application()
        add_routes(self.app, self.assigner)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._health)
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.port = 0

    async def _metrics(self, _: web.Request) -> web.Response:
        body, content_type = metrics.render_latest()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _health(self, _: web.Request) -> web.Response:
        await self.redis.ping()
        return web.json_response({"ok": True})

    async def publish(self, outcome: Reassignment) -> None:
        assert self.producer is not None
        for action in outcome.notifications:
            await self.producer.send_and_wait(
                self.settings.topic(topics.ACTIONS), action.to_bytes(), key=action.lead_id.encode()
            )
        if outcome.assignment is not None:
            await self.producer.send_and_wait(
                self.settings.topic(topics.LEAD_UPDATES),
                outcome.assignment.lead_update(),
                key=outcome.assignment.lead_id.encode(),
            )

    async def enforce_once(self) -> list[Reassignment]:
        outcomes = await self.monitor.run_once()
        for outcome in outcomes:
            try:
                await self.publish(outcome)
            except Exception:  # the reassignment stands; only its messages are lost (see module docstring)
                log.exception("could not publish SLA notifications for lead %s", outcome.breach.lead_id)
        return outcomes

    async def _loop(self) -> None:
        while True:
            try:
                await self.enforce_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis briefly away: the breaches stay due and are handled next round
                log.exception("SLA pass failed; retrying in %.1fs", self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=5, **client_options(self.settings)
        )
        await self.producer.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        self._loop_task = asyncio.create_task(self._loop(), name="sla-monitor")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.producer is not None:
            await self.producer.stop()
        await self.redis.aclose()
