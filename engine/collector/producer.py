"""The collector's Kafka shell: produce normalised events to `clickstream` keyed by lead id; wait for acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from engine.config import Settings
from engine.events import Event
from engine.kafka.security import client_options
from engine.kafka.topics import CLICKSTREAM

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker cannot be reached now; the request should be retried later."""


@dataclass(frozen=True, slots=True)
class ClickstreamRecord:
    """One event as it goes to `clickstream`: key = lead id (UTF-8), value = `Event.to_bytes()`."""

    message_id: str
    key: bytes
    value: bytes

    @classmethod
    def of(cls, event: Event) -> ClickstreamRecord:
        """Raises what `Event.to_bytes` raises (orjson's `TypeError` for a value JSON cannot carry)."""
        return cls(event.message_id, event.lead_id.encode(), event.to_bytes())


class ClickstreamProducer:
    """Lazily connected aiokafka producer for `clickstream` (acks=all).

    Connection: lazy. When the broker is down at start-up, connecting is retried on a later call, at most once per
    `reconnect_interval_s`; meanwhile calls fail at once instead of each waiting for a timeout. Once connected,
    aiokafka reconnects by itself after a broker outage; sends during it fail after `request_timeout_ms`. On first
    connection the `clickstream` topic is created with `settings.partitions` partitions when missing (the
    worker's table is co-partitioned with it; an auto-created topic would have one partition).

    Ordering: kept within one lead (one key → one partition, one in-flight batch per partition in aiokafka).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        request_timeout_ms: int = 5000,
        reconnect_interval_s: float = 1.0,
        linger_ms: int = 2,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic(CLICKSTREAM)
        self._request_timeout_ms = request_timeout_ms
        self._reconnect_interval_s = reconnect_interval_s
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._topic_ready = False
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()

    async def _connect(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
            client_id=f"{self.settings.app_id}-collector",
            **client_options(self.settings),
        )
        try:
            await producer.start()
            if not self._topic_ready:
                await self._ensure_topic()
                self._topic_ready = True
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise BrokerUnavailable(
                f"cannot connect to the broker at {self.settings.broker_url}: {exc}"
            ) from exc
        return producer

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap_servers,
            request_timeout_ms=self._request_timeout_ms,
            **client_options(self.settings),
        )
        await admin.start()
        try:
            if self.topic in await admin.list_topics():
                return
            # Real Kafka: -1 = the cluster's default replication factor; Tansu (dev) only knows 1.
            replication = 1 if self.settings.broker_profile == "dev" else -1
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(self.topic, self.settings.partitions, replication)])
        finally:
            await admin.close()

    async def producer(self) -> AIOKafkaProducer:
        """The started producer, connecting first if needed; `BrokerUnavailable` when that fails now."""
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() - self._last_attempt < self._reconnect_interval_s:
                raise BrokerUnavailable(
                    f"the broker at {self.settings.broker_url} was unreachable moments ago"
                )
            self._last_attempt = time.monotonic()
            self._producer = await self._connect()
            return self._producer

    async def send(self, records: list[ClickstreamRecord]) -> tuple[list[str], list[str]]:
        """Produce every record (serialised beforehand, so nothing can fail half-way through building them) and
        return `(acknowledged, failed)` message ids once the broker answered for each. Never raises for broker
        trouble, so the caller can confirm what was written and let the SDK retry the rest. Back-pressure: waits
        while aiokafka's buffer is full; records the broker did not acknowledge within `request_timeout_ms` count as
        failed."""
        if not records:
            return [], []
        try:
            producer = await self.producer()
        except BrokerUnavailable:
            return [], [r.message_id for r in records]
        # aiokafka fails a batch it could not deliver within request_timeout_ms by itself; the wait below is
        # only a guard and does not cancel: cancelling would not unsend a record, and a retry would double it.
        guard_s = 3 * self._request_timeout_ms / 1000 + 5
        pending: list[asyncio.Future[Any] | BaseException] = []
        for record in records:
            try:
                pending.append(await producer.send(self.topic, record.value, key=record.key))
            except KafkaError as exc:
                pending.append(exc)
        futures = [f for f in pending if isinstance(f, asyncio.Future)]
        if futures:
            await asyncio.wait(futures, timeout=guard_s)
        acked: list[str] = []
        failed: list[str] = []
        first_error: BaseException | None = None
        for record, outcome in zip(records, pending, strict=True):
            if isinstance(outcome, asyncio.Future) and outcome.done() and not outcome.cancelled():
                error = outcome.exception()
            else:
                error = (
                    outcome if isinstance(outcome, BaseException) else TimeoutError("broker did not answer")
                )
            if error is None:
                acked.append(record.message_id)
            else:
                failed.append(record.message_id)
                first_error = first_error or error
        if failed:
            log.warning(
                "broker did not acknowledge %d of %d events: %s", len(failed), len(records), first_error
            )
        return acked, failed

    async def healthy(self) -> bool:
        """True when the broker answers a metadata request now."""
        try:
            producer = await self.producer()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), self._request_timeout_ms / 1000)
        except (BrokerUnavailable, KafkaError, OSError, TimeoutError):
            return False
        return True

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()
