"""`DispatchRig`: the world of one dispatcher test on the real broker and Redis (the `rig` fixture).

Contract:
- `rig.deliveries` and `rig.dead_letters` are `engine.testing.TopicReader`s of the test's `deliveries` and
  `dead-letters` topics, reading from before anything is produced; `.where(outcome="sent")` filters their JSON.
- `await rig.peer(...)` starts an `engine.testing.RecordingPeer` (same options); `rig.dispatcher(yaml)` builds a
  `Dispatcher` (not started) from connector YAML on top of `FAST_DEFAULTS` (short timeouts, backoffs and polls;
  `fast=False`: the shipped defaults); `await rig.start_dispatcher(yaml)` also starts it.
  `await rig.produce(actions, raw)` writes to `actions`; `await rig.produce_updates(records)` writes records of the
  worker's hand-over (`converted(...)`, `consent(...)`) to `lead-updates`, keyed by lead as the worker does.
- `rig.process(name, args, log)` is a `ChildProcess` running `nudge <args>` against the test's broker, Redis,
  app id and topic prefix (not started); `process_env(settings)` is that environment.
- `close()` (the fixture's teardown) stops every dispatcher the rig built, then the readers, then the peers; a
  test may stop or kill a dispatcher itself before that.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from engine.config import Settings
from engine.core.model import Action
from engine.dispatch.config import parse_connectors
from engine.dispatch.delivery import DeliveryHooks
from engine.dispatch.dispatcher import Dispatcher
from engine.kafka.topics import ACTIONS, DEAD_LETTERS, DELIVERIES, LEAD_UPDATES
from engine.testing import ChildProcess, RecordingPeer, TopicReader

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
    settings: Settings,
    yaml_text: str,
    hooks: DeliveryHooks | None = None,
    env: dict[str, str] | None = None,
    *,
    fast: bool = True,
) -> Dispatcher:
    # The test's stack is the dev stack: `NUDGE_BROKER_PROFILE=dev` unless the test says otherwise.
    env = {"NUDGE_BROKER_PROFILE": "dev", **(env or {})}
    config = parse_connectors((FAST_DEFAULTS if fast else "") + yaml_text, env=env)
    return Dispatcher(settings, config, hooks=hooks, grace_s=2.0)


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `nudge` child process working on the test's broker, Redis, app id and topics."""
    return {
        **os.environ,
        "NUDGE_BROKER_URL": settings.broker_url,
        "NUDGE_BROKER_PROFILE": "dev",
        "NUDGE_REDIS_URL": settings.redis_url,
        "NUDGE_APP_ID": settings.app_id,
        "NUDGE_TOPIC_PREFIX": settings.topic_prefix,
        "NUDGE_LOG_LEVEL": "info",
        **extra,
    }


async def produce_actions(settings: Settings, actions: list[Action], raw: list[bytes] | None = None) -> None:
    """Each action keyed by its lead (as the worker does), then each `raw` value as it is (key `bad`)."""
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


def converted(action: Action, at_ms: int | None = None, event: str = "Order Completed") -> dict[str, Any]:
    """The worker's `converted` record for `action`'s lead and rule (an `unless` event), after it fired."""
    return {
        "kind": "converted",
        "lead_id": action.lead_id,
        "rule": action.rule,
        "at_ms": at_ms if at_ms is not None else action.fired_at_ms + 1000,
        "event": event,
        "message_id": f"msg-{event}-{action.lead_id}",
    }


def consent(
    lead_id: str, marketing: bool = False, reason: str = "unsubscribed", source: str = "unsubscribe", at_ms: int = 0
) -> dict[str, Any]:
    """The worker's `consent` record: the lead's marketing consent changed (`at_ms` default: now)."""
    return {
        "kind": "consent",
        "lead_id": lead_id,
        "at_ms": at_ms or int(time.time() * 1000),
        "marketing": marketing,
        "reason": "consent_given" if marketing else reason,
        "source": source,
    }


async def produce_updates(settings: Settings, records: list[dict[str, Any]]) -> None:
    """Write hand-over records to `lead-updates`, keyed by lead id, as the worker does."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for record in records:
            await producer.send(
                settings.topic(LEAD_UPDATES), orjson.dumps(record), key=record["lead_id"].encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


class DispatchRig:
    """Peers, output readers and dispatchers of one test; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.deliveries = TopicReader.from_settings(settings, DELIVERIES)
        self.dead_letters = TopicReader.from_settings(settings, DEAD_LETTERS)
        self._peers: list[RecordingPeer] = []
        self._dispatchers: list[Dispatcher] = []

    async def start(self) -> DispatchRig:
        await self.deliveries.start()
        await self.dead_letters.start()
        return self

    async def peer(self, **options: Any) -> RecordingPeer:
        peer = await RecordingPeer(**options).start()
        self._peers.append(peer)
        return peer

    def dispatcher(
        self,
        yaml_text: str,
        hooks: DeliveryHooks | None = None,
        env: dict[str, str] | None = None,
        *,
        fast: bool = True,
    ) -> Dispatcher:
        dispatcher = build_dispatcher(self.settings, yaml_text, hooks, env, fast=fast)
        self._dispatchers.append(dispatcher)
        return dispatcher

    async def start_dispatcher(
        self,
        yaml_text: str,
        hooks: DeliveryHooks | None = None,
        env: dict[str, str] | None = None,
        *,
        fast: bool = True,
    ) -> Dispatcher:
        dispatcher = self.dispatcher(yaml_text, hooks, env, fast=fast)
        await dispatcher.start()
        return dispatcher

    def process(self, name: str, args: list[str], log: Path, **env: str) -> ChildProcess:
        """`nudge <args>` as a child process of this test (not started); `env` adds variables."""
        return ChildProcess.nudge(name, args, process_env(self.settings, **env), log)

    async def produce(self, actions: list[Action], raw: list[bytes] | None = None) -> None:
        await produce_actions(self.settings, actions, raw)

    async def produce_updates(self, records: list[dict[str, Any]]) -> None:
        await produce_updates(self.settings, records)

    async def close(self) -> None:
        try:
            for dispatcher in reversed(self._dispatchers):
                await dispatcher.stop()
        finally:
            await self.deliveries.stop()
            await self.dead_letters.stop()
            for peer in self._peers:
                await peer.stop()
