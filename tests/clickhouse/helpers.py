"""Helpers for the ClickHouse tests: produce a generated stream, run a sink in-process, poll with a
deadline (`engine.testing.wait_until`, the check run off the event loop: it queries chDB)."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from engine import testing
from engine.clickhouse.sink import Sink, bootstrap_servers, ensure_topics
from engine.config import Settings
from tests.clickhouse.streamgen import Message


async def produce(settings: Settings, messages: list[Message]) -> None:
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings), linger_ms=5)
    await producer.start()
    try:
        for m in messages:
            await producer.send(settings.topic(m.topic), m.value, key=m.key, timestamp_ms=m.timestamp_ms)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until(predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition") -> None:
    await testing.wait_until(predicate, timeout_s, what, poll_s=0.1, off_loop=True)


class SimulatedCrash(RuntimeError):
    """The sink 'dies' after ClickHouse accepted a batch and before the offsets were committed."""


class CrashBeforeCommit(Sink):
    """A real sink that raises instead of making its N-th offset commit (inserts already done)."""

    def __init__(self, *args: object, crash_on_commit: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.crash_on_commit = crash_on_commit
        self.commits = 0

    async def _commit(self, offsets):  # type: ignore[no-untyped-def]
        self.commits += 1
        if self.commits == self.crash_on_commit:
            raise SimulatedCrash(f"crash before commit #{self.commits}")
        await super()._commit(offsets)
