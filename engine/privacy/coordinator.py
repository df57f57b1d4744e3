"""Drives accepted privacy requests to completion, through every store, in an order that leaves nothing behind.

An erasure (`Delete`, `Suppress_With_Delete`) goes through these stages (`engine.privacy.requests`):
1. `worker`: every id's worker answered (`Receipt` from the worker on `privacy`): the lead's state and deadlines
   are gone and, the receipt going out after the batch's other output, so is every action it fired before.
2. `dispatcher`: the dispatcher's consumer groups have committed `actions` and `lead-updates` past their end
   offsets as of stage 1 (its commits mean "final or durably scheduled"): nothing it still holds in memory can
   re-create a key of the lead after stage 3. Skipped for a group that never committed (no dispatcher deployed).
3. `redis`: every Redis key of the lead (`RedisEraser`).
4. `sink_barrier`: the sink's consumer group has committed every topic it stores past the end offsets as of
   stage 3: every row of the lead is in ClickHouse, so the delete finds them all.
5. `clickhouse`: a `DeleteOrder` on `privacy`; the sink deletes the rows, keeps the receipt row and answers with
   its counts and the lead's action ids, whose idempotency claims then go from Redis. Re-sent every
   `ORDER_RESEND_S` until answered (the delete is idempotent).
`Suppress` and `Unsuppress` end after stage 1. Worker requests unanswered for `WORKER_RESEND_S` are sent again.

Hosted by the collector (`engine.collector.regulations`): consumer group `<app_id>-privacy` on `privacy`, so with
several collectors each receipt is read once; each request is advanced under a short Redis lock, so two
collectors never run the same step at once. State lives in Redis (`requests`), so a restarted collector carries
on where another left off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from engine import metrics
from engine.config import Settings
from engine.kafka import topics
from engine.kafka.admin import ensure_topics
from engine.kafka.security import client_options
from engine.privacy.records import DELETING, BadPrivacyRecord, DeleteOrder, Receipt, parse_control
from engine.privacy.redis_erasure import RedisEraser
from engine.privacy.requests import (
    ACTIVE_KEY,
    CLICKHOUSE,
    DISPATCHER,
    DONE,
    DONE_TTL_S,
    REDIS,
    SINK_BARRIER,
    WORKER,
    request_key,
    send_worker_requests,
)

log = logging.getLogger(__name__)

TICK_S = 0.25
LOCK_MS = 30_000
WORKER_RESEND_S = 60.0
ORDER_RESEND_S = 30.0
SINK_TOPICS = (topics.CLICKSTREAM, topics.ACTIONS, topics.DELIVERIES, topics.DEAD_LETTERS, topics.LEAD_UPDATES)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Coordinator:
    """`await Coordinator(settings, redis).run(stop)`: reads receipts and advances every active request (see the
    module docstring) until `stop` is set. Never raises for a request: a step that fails (broker or Redis down) is
    logged and tried again on the next tick. Blocks only in its own task."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.eraser = RedisEraser(redis, settings.app_id)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._offsets: dict[str, AIOKafkaConsumer] = {}  # per watched group: reads its commits, never joins it

    # --- life cycle -----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect (retrying while the broker is down), then read receipts and tick until `stop` is set. Cancelled,
        it closes its clients too (every step is idempotent: the next coordinator redoes a step cut short)."""
        try:
            while not stop.is_set():
                try:
                    await self._start()
                    break
                except Exception as exc:  # the broker is not up yet: the collector serves meanwhile
                    log.warning("privacy coordinator cannot start yet (%s); retrying", type(exc).__name__)
                    await self._close()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 2.0)
            while not stop.is_set():
                await self._read_receipts()
                await self.tick()
        finally:
            await self._close()

    async def _start(self) -> None:
        settings = self.settings
        await ensure_topics(settings, (topics.PRIVACY_REQUESTS, topics.PRIVACY))
        dev = settings.broker_profile == "dev"
        self._consumer = AIOKafkaConsumer(
            settings.topic(topics.PRIVACY),
            bootstrap_servers=settings.bootstrap_servers,
            group_id=f"{settings.app_id}-privacy",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **({"session_timeout_ms": 3000, "heartbeat_interval_ms": 800, "rebalance_timeout_ms": 3000} if dev else {}),
            **client_options(settings),
        )
        await self._consumer.start()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", **client_options(settings)
        )
        await self._producer.start()

    async def _close(self) -> None:
        for client in (self._consumer, self._producer, *self._offsets.values()):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer, self._producer, self._offsets = None, None, {}

    # --- receipts -------------------------------------------------------------------------------------------
    async def _read_receipts(self) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=int(TICK_S * 1000), max_records=500)
        for records in batch.values():
            for record in records:
                try:
                    found = parse_control(record.value)
                except BadPrivacyRecord:
                    continue
                if isinstance(found, Receipt):
                    await self.record_receipt(found)
        if batch:
            await self._consumer.commit()

    async def record_receipt(self, receipt: Receipt) -> None:
        """Keep a store's answer in the request's hash (idempotent: a repeated receipt overwrites its own)."""
        key = request_key(receipt.request_id)
        if not await self.redis.exists(key):
            return  # an expired or foreign request
        if receipt.store == "worker":
            await self.redis.hset(key, f"worker:{receipt.index}", orjson.dumps(receipt.counts))
        else:
            mapping = {f"counts:{receipt.store}": orjson.dumps(receipt.counts)}
            mapping[f"answered:{receipt.store}"] = orjson.dumps(list(receipt.action_ids))
            await self.redis.hset(key, mapping=mapping)  # type: ignore[arg-type]

    # --- advancing requests ---------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Advance every active request by as many stages as it can go now."""
        active = [_text(r) for r in await self.redis.smembers(ACTIVE_KEY)]
        metrics.PRIVACY_PENDING.set(len(active))
        for request_id in sorted(active):
            lock = f"nudge:privacy:lock:{request_id}"
            if not await self.redis.set(lock, "1", nx=True, px=LOCK_MS):
                continue
            try:
                await self.advance(request_id)
            except Exception:
                log.exception("privacy request %s: step failed; retrying", request_id)
            finally:
                await self.redis.delete(lock)

    async def advance(self, request_id: str) -> str:
        """Run the request's next stages while their conditions hold; returns the stage it is left in."""
        key = request_key(request_id)
        raw = {_text(k): _text(v) for k, v in (await self.redis.hgetall(key)).items()}
        if not raw:
            await self.redis.srem(ACTIVE_KEY, request_id)
            return DONE
        stage = raw.get("stage", WORKER)
        while True:
            following = await self._step(request_id, stage, raw)
            if following == stage:
                return stage
            stage = following
            await self.redis.hset(key, "stage", stage)
            raw = {_text(k): _text(v) for k, v in (await self.redis.hgetall(key)).items()}
            if stage == DONE:
                return stage

    async def _step(self, request_id: str, stage: str, raw: dict[str, str]) -> str:
        key = request_key(request_id)
        now_ms = int(time.time() * 1000)
        ids: list[str] = orjson.loads(raw.get("ids") or "[]")
        deleting = raw.get("type") in DELETING
        if stage == WORKER:
            answered = {int(name.split(":", 1)[1]) for name in raw if name.startswith("worker:")}
            missing = [i for i in range(len(ids)) if i not in answered]
            if missing:
                if now_ms - int(raw.get("sent_at_ms") or 0) > WORKER_RESEND_S * 1000:
                    await send_worker_requests(self.settings, request_id, raw["type"], ids, only=missing)
                    await self.redis.hset(key, "sent_at_ms", now_ms)
                return WORKER
            if not deleting:
                return await self._complete(request_id, now_ms)
            ends = await self._end_offsets((topics.ACTIONS, topics.LEAD_UPDATES))
            await self.redis.hset(key, "barrier", orjson.dumps(ends))
            return DISPATCHER
        if stage == DISPATCHER:
            ends = orjson.loads(raw.get("barrier") or "{}")
            app = self.settings.app_id
            for group, topic in (
                (f"{app}-dispatcher", topics.ACTIONS),
                (f"{app}-dispatcher-updates", topics.LEAD_UPDATES),
            ):
                if not await self._caught_up(group, {topic: ends.get(self.settings.topic(topic), {})}):
                    return DISPATCHER
            return REDIS
        if stage == REDIS:
            counts = await self.eraser.erase(ids)
            ends = await self._end_offsets(SINK_TOPICS)
            await self.redis.hset(key, mapping={"counts:redis": orjson.dumps(counts), "barrier": orjson.dumps(ends)})
            return SINK_BARRIER
        if stage == SINK_BARRIER:
            ends = orjson.loads(raw.get("barrier") or "{}")
            wanted = {topic: ends.get(self.settings.topic(topic), {}) for topic in SINK_TOPICS}
            if not await self._caught_up(f"{self.settings.app_id}-sink", wanted):
                return SINK_BARRIER
            await self._order(request_id, raw, ids)
            await self.redis.hset(key, "ordered_at_ms", now_ms)
            return CLICKHOUSE
        if stage == CLICKHOUSE:
            action_ids = raw.get("answered:clickhouse")
            if action_ids is None:
                if now_ms - int(raw.get("ordered_at_ms") or 0) > ORDER_RESEND_S * 1000:
                    await self._order(request_id, raw, ids)
                    await self.redis.hset(key, "ordered_at_ms", now_ms)
                return CLICKHOUSE
            action_counts = await self.eraser.erase_action_keys(orjson.loads(action_ids))
            redis_counts = orjson.loads(raw.get("counts:redis") or "{}")
            redis_counts["idempotency"] = action_counts["idempotency"]
            redis_counts["caps"] = redis_counts.get("caps", 0) + action_counts["caps"]
            await self.redis.hset(key, "counts:redis", orjson.dumps(redis_counts))
            return await self._complete(request_id, now_ms)
        return stage

    async def _complete(self, request_id: str, now_ms: int) -> str:
        key = request_key(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(key, "ids", "terms")  # the only place the pipeline kept the person's ids
            pipe.hset(key, mapping={"stage": DONE, "completed_at_ms": now_ms})
            pipe.expire(key, DONE_TTL_S)
            pipe.srem(ACTIVE_KEY, request_id)
            await pipe.execute()
        metrics.PRIVACY_REQUESTS.labels("coordinator", "completed").inc()
        log.info("privacy request %s completed", request_id)
        return DONE

    async def _order(self, request_id: str, raw: dict[str, str], ids: list[str]) -> None:
        assert self._producer is not None
        counts: dict[str, dict[str, int]] = {}
        worker: dict[str, int] = {}
        for name, value in raw.items():
            if name.startswith("worker:"):
                for kind, n in orjson.loads(value).items():
                    worker[kind] = worker.get(kind, 0) + int(n)
        counts["worker"] = worker
        counts["redis"] = {k: int(v) for k, v in orjson.loads(raw.get("counts:redis") or "{}").items()}
        order = DeleteOrder(
            request_id,
            raw.get("type", ""),
            tuple(ids),
            raw.get("subject_hash", ""),
            int(raw.get("requested_at_ms") or 0),
            raw.get("reason", ""),
            tuple(orjson.loads(raw.get("terms") or "[]")),
            counts,
        )
        await self._producer.send_and_wait(
            self.settings.topic(topics.PRIVACY), order.to_bytes(), key=request_id.encode()
        )

    # --- barriers -------------------------------------------------------------------------------------------
    async def _end_offsets(self, names: Iterable[str]) -> dict[str, dict[str, int]]:
        """{full topic name: {partition: end offset}} now."""
        assert self._consumer is not None
        full = [self.settings.topic(name) for name in names]
        await ensure_topics(self.settings, names)
        partitions = []
        for topic in full:
            for partition in self._consumer.partitions_for_topic(topic) or await self._partitions(topic):
                partitions.append(TopicPartition(topic, partition))
        ends = await self._consumer.end_offsets(partitions)
        out: dict[str, dict[str, int]] = {}
        for tp, offset in ends.items():
            out.setdefault(tp.topic, {})[str(tp.partition)] = int(offset)
        return out

    async def _partitions(self, topic: str) -> set[int]:
        assert self._consumer is not None
        await self._consumer.topics()  # refreshes metadata
        return set(self._consumer.partitions_for_topic(topic) or ())

    async def _caught_up(self, group: str, ends: dict[str, dict[str, int]]) -> bool:
        """Whether `group` has committed every partition of `ends` (topic names without the prefix) at or past its
        end offset. A group that has never committed anything is not there to wait for."""
        reader = self._offsets.get(group)
        if reader is None:
            # A consumer with the group's id answers OffsetFetch without joining the group (no rebalance); the
            # admin client's OffsetFetch is dropped by the dev broker (engine.testing.CommittedOffsets).
            reader = AIOKafkaConsumer(
                bootstrap_servers=self.settings.bootstrap_servers,
                group_id=group,
                enable_auto_commit=False,
                **client_options(self.settings),
            )
            await reader.start()
            self._offsets[group] = reader
        positions: list[tuple[int, int | None]] = []
        for name, partitions in ends.items():
            topic = self.settings.topic(name)
            for partition, end in partitions.items():
                positions.append((int(end), await reader.committed(TopicPartition(topic, int(partition)))))
        if all(position is None for _, position in positions):
            return True  # the group never committed these topics: no such consumer is deployed
        return all(end <= 0 or (position or 0) >= end for end, position in positions)
