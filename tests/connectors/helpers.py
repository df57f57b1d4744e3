"""Test helpers: a recording HTTP peer, action builders, topic readers, a dispatcher harness."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from engine.config import Settings
from engine.core.model import Action, make_action_id
from engine.dispatch.config import parse_connectors
from engine.dispatch.delivery import DeliveryHooks
from engine.dispatch.dispatcher import Dispatcher
from engine.kafka.topics import ACTIONS

_ids = itertools.count()


def make_action(
    connector: str = "webhook",
    *,
    lead_id: str | None = None,
    rule: str = "cart_abandoned",
    context: dict[str, Any] | None = None,
    **fields: Any,
) -> Action:
    n = next(_ids)
    lead = lead_id or f"lead-{n}"
    base: dict[str, Any] = {
        "action_id": make_action_id(rule, "1", lead, f"t{n}-{time.time_ns()}"),
        "rule": rule,
        "rule_version": "1",
        "lead_id": lead,
        "fired_at_ms": int(time.time() * 1000),
        "trigger": (f"msg-{n}",),
        "connector": connector,
        "explanation": "cart of $120.00 idle for 30 min",
        "template": "cart_reminder",
        "context": context
        if context is not None
        else {
            "traits": {"email": f"{lead}@example.com", "name": "Ada Lovelace", "timezone": "UTC"},
            "cart": {
                "items": [
                    {"product_id": "p1", "name": "Walnut Desk", "price": 100.0, "quantity": 1},
                    {"product_id": "p2", "name": "Brass Lamp", "price": 10.0, "quantity": 2},
                ],
                "value": 120.0,
                "currency": "USD",
            },
        },
    }
    base.update(fields)
    return Action(**base)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Peer:
    """A real HTTP server on loopback that records requests and answers from a script.

    `script` is consumed one response per request: (status, headers, body); when empty, `default` answers.
    `ids()` lists the action id of every request that arrived (a deduping peer counts `set(ids())`).
    """

    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    default: tuple[int, dict[str, str], str] = (200, {}, "ok")
    requests: list[Request] = field(default_factory=list)
    hold: asyncio.Event | None = None  # when set, requests wait until the event is set
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ids(self, header: str = "X-Nudge-Action-Id") -> list[str]:
        return [r.headers.get(header, "") for r in self.requests]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Request(request.method, request.path, dict(request.headers), body, time.time()))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        status, headers, text = self.script.pop(0) if self.script else self.default
        return web.Response(status=status, headers=headers, text=text)

    async def start(self) -> Peer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def produce_actions(settings: Settings, actions: list[Action], raw: list[bytes] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for action in actions:
            await producer.send(settings.topic(ACTIONS), action.to_bytes(), key=action.lead_id.encode())
        for value in raw or []:
            await producer.send(settings.topic(ACTIONS), value, key=b"bad")
        await producer.flush()
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning (no group) and keeps every record's JSON value."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = settings.topic(topic)
        self.consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
        )
        self.records: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicReader:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for record in self.consumer:
            self.raw.append(record.value)
            self.records.append(orjson.loads(record.value))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    def where(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]


FAST_DEFAULTS = """
defaults:
  timeout_s: 2
  concurrency: 4
  retry: {max_attempts: 4, base_delay_s: 0.05, max_delay_s: 0.2}
  circuit: {failure_threshold: 50, reset_after_s: 0.5}
dispatcher:
  session_timeout_ms: 2000
  schedule_poll_s: 0.05
  commit_interval_s: 0.2
"""


def build_dispatcher(
    settings: Settings, yaml_text: str, hooks: DeliveryHooks | None = None, env: dict[str, str] | None = None
) -> Dispatcher:
    config = parse_connectors(FAST_DEFAULTS + yaml_text, env=env or {})
    return Dispatcher(settings, config, hooks=hooks, grace_s=2.0)


async def eventually(
    step: Callable[[], Awaitable[bool]], timeout_s: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await step():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)
