"""Helpers that drive a real `nudge worker` through Kafka: run it as a subprocess, send events, read outputs.

- `WorkerProcess(settings, log_path)`: `start()` launches `nudge worker` with the settings as NUDGE_*
  variables, `wait_ready()` waits (bounded) until it logged that its deadline index is built, `stop()` sends
  SIGTERM and waits (then SIGKILL). A worker that dies early fails the test with the tail of its log.
- `TopicReader`: consumes output topics from the beginning in the background; `wait_for(predicate, timeout)`
  polls with a deadline instead of sleeping.
- `send(settings, records)`: produce (key, value) pairs to `clickstream`, one request per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from engine.config import Settings
from engine.events import format_ts

READY_MARK = "deadline index rebuilt"
NUDGE = str(Path(sys.executable).with_name("nudge"))


def bootstrap(settings: Settings) -> str:
    return settings.bootstrap_servers


class WorkerProcess:
    """One `nudge worker` subprocess; see the module docstring."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        env = {**os.environ, **self.settings.env()}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [NUDGE, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout_s: float = 40.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if READY_MARK in self.log_text():
                return
            if not self.alive():
                raise AssertionError(f"worker exited early:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout_s} s:\n{self.log_text()[-4000:]}")

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Record:
    topic: str
    key: bytes | None
    value: bytes

    def json(self) -> Any:
        return orjson.loads(self.value)


class TopicReader:
    """Collects every record of some topics (from the beginning) in a background task."""

    def __init__(self, settings: Settings, *names: str) -> None:
        self.topics = [settings.topic(name) for name in names]
        self.records: list[Record] = []
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=bootstrap(settings), auto_offset_reset="earliest",
            metadata_max_age_ms=500,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                self.records.extend(Record(tp.topic, m.key, m.value) for m in messages)

    def of(self, name_suffix: str) -> list[Record]:
        return [r for r in self.records if r.topic.endswith(name_suffix)]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; got {self.records!r}"[:4000])


def track(lead: str, event: str, at_ms: int, message_id: str, **properties: Any) -> bytes:
    return orjson.dumps(
        {
            "type": "track", "event": event, "userId": lead, "timestamp": format_ts(at_ms),
            "messageId": message_id, "properties": properties,
        }
    )


async def send(settings: Settings, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(settings))
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.topic("clickstream"), value, key=key)
    finally:
        await producer.stop()


async def create_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create topics up front so producers and readers never race the worker's own topic creation."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings))
    await admin.start()
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(settings.topic(name), settings.partitions, 1)])
    finally:
        await admin.close()
