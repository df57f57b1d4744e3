"""Automatic release: a lead that reaches a release stage (`customer`, `lost`, ... from the roster's `release_on`)
or whose release event happens (e.g. `Deal Lost`) frees its rep, or leaves the queue when it was waiting."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from engine.assignment.operations import RepOperations
from engine.assignment.roster import ReleasePolicy
from engine.config import Settings
from engine.events import InvalidEvent, parse_event
from engine.kafka import topics
from engine.kafka.security import client_options

log = logging.getLogger(__name__)

# A lifecycle record releases an assignment made up to this long after the record's (event) time: event time trails
# the wall clock a little; a record much older than the assignment (a replay, a late duplicate) must not release it.
LATENESS_MS = 60_000


@dataclass(frozen=True)
class ReleaseSignal:
    lead_id: str
    reason: str  # "stage:customer" | "event:Deal Lost"
    at_ms: int


def release_signal(topic: str, value: bytes | None, policy: ReleasePolicy) -> ReleaseSignal | None:
    """Pure: does this record release its lead? `topic` is the unprefixed topic name (`lead-updates` records of
    kind `stage_changed`; `clickstream` track events). Anything unreadable is not a signal."""
    if not value:
        return None
    if topic == topics.LEAD_UPDATES:
        if b"stage_changed" not in value:
            return None
        try:
            doc: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or doc.get("kind") != "stage_changed":
            return None
        reason = policy.reason_for_stage(doc.get("stage") or doc.get("to"))
        lead_id, at_ms = doc.get("lead_id"), doc.get("at_ms")
        if reason and isinstance(lead_id, str) and lead_id and isinstance(at_ms, int):
            return ReleaseSignal(lead_id, reason, at_ms)
        return None
    if topic == topics.CLICKSTREAM:
        if not any(orjson.dumps(name) in value for name in policy.events):  # cheap test before parsing
            return None
        try:
            event = parse_event(value)
        except InvalidEvent:
            return None
        reason = policy.reason_for_event(event.name) if event.type == "track" else None
        return ReleaseSignal(event.lead_id, reason, event.timestamp_ms) if reason else None
    return None


class LifecycleWatcher:
    """Consumes `lead-updates` (when `release_on.stages` is set) and `clickstream` (when `release_on.events` is set)
    in the consumer group `<NUDGE_APP_ID>-reps-lifecycle` and releases through `RepOperations.release` (history,
    outbox, queue drain).

    Contract: offsets are committed after the releases of a batch (at least once; a release is idempotent, and
    `not_after_ms` = record time + `LATENESS_MS` keeps a re-read record from releasing a newer assignment). A new
    group starts at the end of the topics (nothing before the first start is acted on). Errors of one batch are
    logged and the batch is read again after `retry_s`. Several `nudge reps serve` split the partitions.
    """

    def __init__(self, settings: Settings, policy: ReleasePolicy, operations: RepOperations, retry_s: float = 1.0):
        self.settings = settings
        self.policy = policy
        self.operations = operations
        self.retry_s = retry_s
        self.consumer: AIOKafkaConsumer | None = None
        self.released = 0
        names = []
        if policy.stages:
            names.append(topics.LEAD_UPDATES)
        if policy.events:
            names.append(topics.CLICKSTREAM)
        self._topics = {settings.topic(name): name for name in names}

    @property
    def enabled(self) -> bool:
        return bool(self._topics)

    async def start(self) -> None:
        if not self.enabled:
            return
        dev = self.settings.broker_profile != "kafka"
        self.consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=f"{self.settings.app_id}-reps-lifecycle",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            metadata_max_age_ms=5000,
            **({"session_timeout_ms": 3000, "heartbeat_interval_ms": 800, "rebalance_timeout_ms": 3000} if dev else {}),
            **client_options(self.settings),
        )
        await self.consumer.start()

    async def run_once(self, timeout_ms: int = 500) -> int:
        """Read one batch, release what it asks for, commit. Returns the releases made."""
        assert self.consumer is not None
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        done = 0
        try:
            for partition, records in batch.items():
                name = self._topics.get(partition.topic, "")
                for record in records:
                    signal = release_signal(name, record.value, self.policy)
                    if signal is None:
                        continue
                    result = await self.operations.release(
                        signal.lead_id, None, by="lifecycle", reason=signal.reason,
                        not_after_ms=signal.at_ms + LATENESS_MS,
                    )  # fmt: skip
                    if result.status in ("released", "dequeued"):
                        done += 1
            if batch:
                await self.consumer.commit()
        except BaseException:
            for partition, records in batch.items():  # read the whole batch again next time
                self.consumer.seek(partition, records[0].offset)
            raise
        self.released += done
        return done

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle release pass failed; retrying in %.1fs", self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
