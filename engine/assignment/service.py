"""The assignment service process (`nudge reps serve`): the /v1 API, the reps' inbox and signed links, and the loops
that keep assignments moving (SLA, queue, outbox relay, automatic release).

Contract:
- One port serves `api` (/v1, bearer token), `inbox` (/inbox and /links, signed links and sessions) and, unless
  `metrics_port` is given, `GET /metrics` and `GET /healthz` (the only routes without credentials; they carry no
  lead, rep or roster data). With `metrics_port` those two move to their own listener and the main port answers
  nothing without credentials. Every route has a declared policy (`auth`), enforced by one middleware.
- Every `interval_s` (sooner when the store's wake signal says capacity freed): `SlaMonitor.run_once()` (its
  notifications produced to `actions`), the queue drained in order (each new owner told), queue alerts sent once
  per waiting lead (`sla.queue_alert_after`), the outbox relayed to `lead-updates` (`relay.ChangeRelay`), and the
  queue gauges updated. `LifecycleWatcher` runs beside it when the roster has `release_on` stages or events.
- Produces wait for the broker's ack (acks=all). A notification whose produce fails after its change committed is
  logged and not retried: notifications are at most once; the changes themselves exactly once (Lua, see `store`),
  and their `lead-updates` records at least once (the relay).
- Several service processes may run: the SLA monitor, the queue drain, alerts and the relay each act once per
  lead or change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer

from engine import metrics
from engine.assignment import api, inbox
from engine.assignment.assigner import Assigner
from engine.assignment.auth import AUTH_KEY, Policy, RepsAuth, Sessions, api_token, authenticate, declare
from engine.assignment.lifecycle import LifecycleWatcher
from engine.assignment.links import RepLinks
from engine.assignment.model import Reassignment
from engine.assignment.notifications import queue_alert_actions
from engine.assignment.operations import RepOperations
from engine.assignment.relay import ChangeRelay
from engine.assignment.roster import Roster
from engine.assignment.sla import SlaMonitor
from engine.config import Settings
from engine.core.model import Action
from engine.kafka import topics
from engine.kafka.security import client_options

log = logging.getLogger(__name__)


def create_app(assigner: Assigner, operations: RepOperations, links: RepLinks, auth: RepsAuth) -> web.Application:
    """The reps web application: /v1 (`api`), /inbox and /links (`inbox`), behind `auth.authenticate`. Without
    /metrics and /healthz (the service adds them where `metrics_port` says)."""
    app = web.Application(middlewares=[authenticate])
    app[AUTH_KEY] = auth
    api.add_routes(app, assigner, operations)
    inbox.add_routes(app, links)
    return app


class AssignmentService:
    """Owns one Redis client, one Kafka producer, the web app and the loops; `start()` then `stop()`.

    `links` defaults to `RepLinks.from_settings(settings)`. Outside the dev broker profile a NUDGE_REPS_LINK_SECRET
    or NUDGE_REPS_API_TOKEN shorter than 32 bytes raises `ConfigError` here, before anything starts."""

    def __init__(
        self,
        settings: Settings,
        roster: Roster,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
        links: RepLinks | None = None,
    ) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.links = links or RepLinks.from_settings(settings, clock=clock)
        self.assigner = Assigner(self.redis, roster, clock=clock, links=self.links)
        self.monitor = SlaMonitor(self.assigner)
        self.operations = RepOperations(self.assigner, self._produce_actions)
        self.relay = ChangeRelay(self.assigner.store, self._produce_update)
        self.lifecycle = LifecycleWatcher(settings, roster.release_on, self.operations)
        self.interval_s = interval_s
        self.producer: AIOKafkaProducer | None = None
        self.auth = RepsAuth(
            token=api_token(settings),
            sessions=Sessions(self.redis, settings.reps_session_ttl_s, key_id=self.links.key_id),
            roster=roster,
            secure_cookies=settings.reps_public_url.lower().startswith("https://"),
        )
        self.app = create_app(self.assigner, self.operations, self.links, self.auth)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.port = 0
        self.metrics_port: int | None = None

    def add_ops_routes(self, app: web.Application) -> None:
        declare(app, app.router.add_get("/metrics", self._metrics).resource, Policy.PUBLIC)
        declare(app, app.router.add_get("/healthz", self._health).resource, Policy.PUBLIC)

    async def _metrics(self, _: web.Request) -> web.Response:
        body, content_type = metrics.render_latest()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _health(self, _: web.Request) -> web.Response:
        await self.redis.ping()
        return web.json_response({"ok": True})

    async def _produce_actions(self, actions: Sequence[Action]) -> None:
        assert self.producer is not None
        for action in actions:
            await self.producer.send_and_wait(
                self.settings.topic(topics.ACTIONS), action.to_bytes(), key=action.lead_id.encode()
            )

    async def _produce_update(self, lead_id: str, value: bytes) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.settings.topic(topics.LEAD_UPDATES), value, key=lead_id.encode())

    async def publish(self, outcome: Reassignment) -> None:
        """The notifications of one SLA outcome (its `lead-updates` record comes from the outbox relay)."""
        await self._produce_actions(outcome.notifications)

    async def enforce_once(self) -> list[Reassignment]:
        outcomes = await self.monitor.run_once()
        for outcome in outcomes:
            try:
                await self.publish(outcome)
            except Exception:  # the reassignment stands; only its messages are lost (see module docstring)
                log.exception("could not publish SLA notifications for lead %s", outcome.breach.lead_id)
        return outcomes

    async def alert_queue_once(self) -> int:
        due = await self.assigner.queue_alerts_due()
        now_ms = self.assigner.now_ms()
        for item in due:
            metrics.ASSIGNMENT_CHANGES.labels("queue_alerted").inc()
            await self.operations.publish(queue_alert_actions(item, now_ms, self.assigner.roster.sla.team_channel))
        return len(due)

    async def run_once(self) -> None:
        """One pass of every loop step (tests call it directly)."""
        await self.enforce_once()
        await self.operations.drain()
        await self.alert_queue_once()
        await self.relay.run_once()
        length, oldest_s = await self.assigner.queue_stats()
        metrics.ASSIGNMENT_QUEUE_LENGTH.set(length)
        metrics.ASSIGNMENT_QUEUE_OLDEST.set(oldest_s)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis or the broker briefly away: the work stays due and is done next round
                log.exception("assignment pass failed; retrying in %.1fs", self.interval_s)
            try:
                await self.assigner.store.wait_for_wake(self.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(self.interval_s)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)  # no access log: URLs carry signed links
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def start(self, host: str = "127.0.0.1", port: int = 0, metrics_port: int | None = None) -> None:
        if not self.settings.reps_api_token:
            log.warning("NUDGE_REPS_API_TOKEN is unset: every /v1 request is refused (the inbox still works)")
        if metrics_port is None:
            self.add_ops_routes(self.app)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=5, **client_options(self.settings)
        )
        await self.producer.start()
        self.port = await self._serve(self.app, host, port)
        if metrics_port is not None:
            ops = web.Application()
            self.add_ops_routes(ops)
            self.metrics_port = await self._serve(ops, host, metrics_port)
        self._tasks.append(asyncio.create_task(self._loop(), name="assignment-loop"))
        if self.lifecycle.enabled:
            await self.lifecycle.start()
            self._tasks.append(asyncio.create_task(self.lifecycle.run(), name="assignment-lifecycle"))

    async def stop(self) -> None:
        # The loop ends by itself after its current pass (its Redis wait is bounded by `interval_s`): cancelling a
        # blocking BLPOP can leave redis-py's client waiting forever, so cancellation is only the fallback, and
        # every wait here is bounded.
        self._stopping = True
        loop_tasks = [task for task in self._tasks if task.get_name() == "assignment-loop"]
        if loop_tasks:
            await asyncio.wait(loop_tasks, timeout=self.interval_s + 5)
        for task in self._tasks:
            if not task.done():
                task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            if stuck:
                log.warning("%d assignment tasks did not stop within 5 s; going on", len(stuck))
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("assignment task %s had failed", task.get_name(), exc_info=task.exception())
        for runner in self._runners:
            await runner.cleanup()
        # Bounded: a broker that stopped answering must not keep the process from exiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.lifecycle.stop(), 10)
        if self.producer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.producer.stop(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.redis.aclose(), 5)
