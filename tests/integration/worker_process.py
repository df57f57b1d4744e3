"""Drive a real `nudge worker` through Kafka: run it as a subprocess and send it events (read its outputs with
`engine.testing.TopicReader`).

- `WorkerProcess(settings, log_path)`: an `engine.testing.ChildProcess` running `nudge worker` with the settings
  as NUDGE_* variables; `start_ready()` creates the topics first (so producers and readers never race the
  worker's own topic creation), starts it and waits (bounded) until it logged that its deadline index is built.
  A worker that dies early fails the test with the tail of its log.
- `with_rules(settings, tmp_path, rules_yaml)`: settings for a worker test: that rule pack, 0.5 s of allowed
  lateness (deadlines fire 0.5-0.7 s after they fall due), a free /metrics port.
- `cart_abandoned(...)`: the tests' abandoned-cart rule (Product Added, no Order Completed within 2 s).
- `send(settings, records)`: produce (key, value) pairs to `clickstream`, one request per record;
  `track(...)`: a Segment track event.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from engine.config import Settings
from engine.devstack import free_port
from engine.events import format_ts
from engine.kafka.admin import ensure_topics
from engine.testing import ChildProcess, nudge_command

READY_MARK = "deadline index rebuilt"  # logged by engine/worker/lead_worker.py once its partitions are recovered
WORKER_TOPICS = ("clickstream", "actions", "dead-letters")


class WorkerProcess(ChildProcess):
    """One `nudge worker` subprocess with the test's settings; see the module docstring."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__("nudge worker", [*nudge_command(), "worker"], {**os.environ, **settings.env()}, log_path)
        self.settings = settings

    async def wait_ready(self, timeout_s: float = 40.0) -> None:
        await self.wait_for_log(READY_MARK, timeout_s)

    async def start_ready(self, topics: Sequence[str] = WORKER_TOPICS) -> None:
        await ensure_topics(self.settings, topics)
        self.start()
        await self.wait_ready()

    def stop(self, grace_s: float = 20.0) -> int | None:
        return super().stop(grace_s)

    def events_consumed(self) -> float:
        """Clickstream events the worker has evaluated since it started (`nudge_events_consumed_total`)."""
        url = f"http://127.0.0.1:{self.settings.web_port}/metrics"
        with contextlib.suppress(OSError):
            body = urllib.request.urlopen(url, timeout=5).read().decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                       if line.startswith("nudge_events_consumed_total{"))
        return 0.0

    async def wait_consumed(self, count: int, timeout_s: float = 20.0) -> None:
        """Until the worker has evaluated `count` clickstream events: input on another topic (a privacy request)
        is not ordered with the clickstream, so a test that needs "after those events" waits for them here."""
        await self.wait_until(lambda: self.events_consumed() >= count, timeout_s, f"{count} events consumed")

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        # Captured by pytest and shown only when the test fails: what the worker said, for a failure seen once in CI.
        lines = self.log_text().splitlines()
        notable = [line for line in lines if any(level in line for level in ("[WARNING]", "[ERROR]", "[CRITICAL]"))]
        print(f"--- {self.log_path}: warnings and errors (last 40 of {len(notable)}) ---", *notable[-40:], sep="\n")
        print(f"--- {self.log_path}: last lines ---", *lines[-60:], sep="\n")


def with_rules(settings: Settings, tmp_path: Path, rules_yaml: str, **changes: Any) -> Settings:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "test.yaml").write_text(rules_yaml)
    return settings.with_(**{"rules_path": rules, "allowed_lateness_s": 0.5, "web_port": free_port(), **changes})


def cart_abandoned(action: str = "{connector: webhook}", *, unless: bool = True, within: str = "2s") -> str:
    """The YAML of one rule, `cart_abandoned`: Product Added (unless Order Completed) within 2 s."""
    cancelled_by = "    unless: {event: Order Completed}\n" if unless else ""
    return (
        "  - id: cart_abandoned\n    kind: absence\n    when: {event: Product Added}\n"
        f"{cancelled_by}    within: {within}\n    action: {action}\n"
    )


def track(lead: str, event: str, at_ms: int, message_id: str, **properties: Any) -> bytes:
    return orjson.dumps(
        {
            "type": "track", "event": event, "userId": lead, "timestamp": format_ts(at_ms),
            "messageId": message_id, "properties": properties,
        }
    )


async def send(settings: Settings, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.topic("clickstream"), value, key=key)
    finally:
        await producer.stop()
