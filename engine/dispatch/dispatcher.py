"""The dispatcher of `nudge dispatch`: consumes `actions`, delivers each through its connector and the delivery
policies, records every outcome. Runs in its own process, apart from rule evaluation: a slow or dead peer never
stalls the workers, only this consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from connectors.base import ConnectorEnv
from connectors.registry import connector_class
from connectors.rendering import Renderer
from engine.config import ConfigError, Settings
from engine.core.model import Action
from engine.dispatch.config import ConnectorsFile, startup_problems
from engine.dispatch.delivery import ConnectorRuntime, Deliverer, DeliveryHooks, Job
from engine.dispatch.hot_leads import HotLeads, build_assigner
from engine.dispatch.offsets import OffsetTracker
from engine.dispatch.outcomes import OutcomeRecorder
from engine.dispatch.policies.caps import FrequencyCaps
from engine.dispatch.policies.circuit import CircuitBreaker
from engine.dispatch.policies.idempotency import IdempotencyStore
from engine.dispatch.policies.quiet_hours import QuietHours, zone
from engine.dispatch.policies.recheck import (
    ConsentChange,
    Converted,
    LeadUpdate,
    NotARecheckUpdate,
    RecheckState,
    expires_at_of,
    parse_update,
)
from engine.dispatch.policies.retry import RetryPolicy
from engine.dispatch.redaction import Redactor
from engine.dispatch.redis_memory import watch_redis_memory
from engine.dispatch.schedule import Schedule, ScheduledDelivery, in_priority_order
from engine.kafka.admin import ensure_topics
from engine.kafka.security import client_options
from engine.kafka.topics import ACTIONS, DEAD_LETTERS, DELIVERIES, LEAD_UPDATES
from engine.metrics import CONSUMER_LAG, DISPATCH_LEAD_UPDATES, DISPATCH_SCHEDULED

logger = logging.getLogger("nudge.dispatcher")

TOPICS = (ACTIONS, DELIVERIES, DEAD_LETTERS, LEAD_UPDATES)


class _Rebalance(ConsumerRebalanceListener):
    """Commits what is safe before partitions move to another dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.dispatcher.commit()
        self.dispatcher.tracker.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("dispatcher assigned %d partitions", len(assigned))


class Dispatcher:
    """Delivers the actions of the `actions` partitions it is assigned. Use: `start()`, then `stop()`; or
    `run_until(stop_event)`.

    Consumes with aiokafka in the consumer group `<app_id>-dispatcher`: several dispatchers split the partitions.

    Commit: auto-commit is off. An offset is committed (every `dispatcher.commit_interval_s`, on a revoke and on
    `stop()`) only when every action before it has a final outcome recorded in `deliveries` or is durably
    scheduled in Redis (`OffsetTracker`), so a crash loses nothing; redelivered actions are recognised by their
    idempotency claims. Actions finish out of order; a slow one holds back the commit of later ones.

    Back-pressure: at most `dispatcher.max_inflight` actions are handled at once (records and due schedule
    entries together); the consumer stops fetching while all slots are taken. Each connector has its own
    `concurrency` and circuit breaker, and a failed attempt waits in the Redis schedule, not in memory, so one
    dead peer holds at most its own slots (and none once its circuit opens).

    Errors: malformed records (not JSON, missing fields) go to `dead-letters` with the reason; the dispatcher never
    crashes on input. If Redis or the broker fails while an action is handled, the step is retried in place with
    backoff (`_guarded`; the action's offset stays uncommitted), never skipped.

    Hot leads (`HotLeads`): before delivery, an action asking for an owner gets one (roster at
    `settings.reps_path` + Redis), the rep's notifications are delivered right there through the same policies,
    and `release_owner: true` frees the rep. Fresh assignments go to `lead-updates`.

    Re-check at send time (`policies.recheck`): a second consumer, group `<app_id>-dispatcher-updates`, follows
    `lead-updates` and folds its `converted` and `consent` records into Redis (`RecheckState`); every attempt
    reads it once before sending (`Deliverer`). A consent withdrawal also brings the lead's waiting marketing
    actions forward in the schedule (a conversion: that rule's actions fired before it), so they are re-checked
    and suppressed within one schedule poll. `start()` first catches up with `lead-updates` (to the end offsets
    as of the start, then until a fetch comes back empty), so a restarted dispatcher never sends a held action
    that an unsubscribe recorded while it was down should stop. Offsets of `lead-updates` are committed after
    the records are applied (at-least-once; applying is idempotent).

    Priority: due schedule entries are grouped by lead and each lead's are handled one after the other, highest
    `priority` first (`in_priority_order`), so when caps let only some through, the higher priority wins.
    """

    def __init__(
        self,
        settings: Settings,
        config: ConnectorsFile,
        *,
        hooks: DeliveryHooks | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.config = config
        self.hooks = hooks
        self.grace_s = grace_s
        self.redactor = Redactor(config.secret_values())
        self.tracker = OffsetTracker()
        self.prefix = f"nudge:{settings.app_id}:"
        self._slots = asyncio.Semaphore(config.dispatcher.max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._leased: set[str] = set()  # schedule entries this process is handling
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.redis: Redis | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.updates_consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.runtimes: dict[str, ConnectorRuntime] = {}

    # --- life cycle
    async def start(self) -> None:
        """Create missing topics, start every connector, the producer, catch up with `lead-updates`, then start
        the consumer and the consume, schedule, updates and commit loops; returns once they run. Raises
        `ConfigError` (before connecting anything) for `startup_problems` (outside the dev profile: marketing
        email without an unsubscribe secret or https unsubscribe URL), an unknown default timezone or an invalid
        reps roster, and whatever a connector's `start()` raises."""
        settings, config = self.settings, self.config
        problems = startup_problems(config, settings)
        if problems:
            raise ConfigError("; ".join(problems))
        await ensure_topics(settings, TOPICS)
        self.redis = Redis.from_url(settings.redis_url)
        renderer = Renderer(config.templates_dir)
        env = ConnectorEnv(settings, renderer)
        consent = config.policies.consent
        for name, options in config.connectors.items():
            connector = connector_class(options.type)(name, options, env)
            await connector.start()
            obeys = name in consent.connectors if consent.connectors is not None else connector.consent_by_default
            delivery = config.delivery_for(name)
            self.runtimes[name] = ConnectorRuntime(
                connector, RetryPolicy(delivery.retry), CircuitBreaker(name, delivery.circuit), obeys
            )
        timezone = config.policies.default_timezone or settings.default_timezone
        if zone(timezone) is None:
            raise ConfigError(
                f"NUDGE_DEFAULT_TIMEZONE={timezone!r} is not a known timezone; use an IANA name like Europe/Paris"
            )
        quiet = config.policies.quiet_hours
        self.recheck = RecheckState(self.redis, self.prefix, config.policies.recheck)
        self.deliverer = Deliverer(
            self.runtimes,
            IdempotencyStore(self.redis, self.prefix, config.policies.idempotency),
            FrequencyCaps(self.redis, self.prefix, config.effective_caps()),
            QuietHours(quiet, timezone) if quiet is not None else None,
            Schedule(self.redis, self.prefix),
            require_explicit_consent=consent.require_explicit,
            hooks=self.hooks,
            recheck=self.recheck,
        )
        self.schedule = self.deliverer.schedule
        bootstrap = settings.bootstrap_servers
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, **client_options(settings)
        )
        await self.producer.start()
        self.recorder = OutcomeRecorder(self.producer, settings, self.redactor, set(self.runtimes))
        self.hot_leads = HotLeads(
            build_assigner(settings, self.redis), self._deliver_note, self._publish_update, set(self.runtimes)
        )
        session_ms = config.dispatcher.session_timeout_ms or (6000 if settings.broker_profile == "dev" else 10000)
        self.updates_consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{settings.app_id}-dispatcher-updates",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 6),
            max_poll_interval_ms=300_000,
            **client_options(settings),
        )
        self.updates_consumer.subscribe([settings.topic(LEAD_UPDATES)])
        await self.updates_consumer.start()
        await self._catch_up_updates(session_ms)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{settings.app_id}-dispatcher",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 6),
            max_poll_interval_ms=300_000,
            **client_options(settings),
        )
        self.consumer.subscribe([settings.topic(ACTIONS)], listener=_Rebalance(self))
        await self.consumer.start()
        self._loops = [
            asyncio.create_task(self._consume_loop(), name="dispatch-consume"),
            asyncio.create_task(self._schedule_loop(), name="dispatch-schedule"),
            asyncio.create_task(self._commit_loop(), name="dispatch-commit"),
            asyncio.create_task(self._updates_loop(), name="dispatch-updates"),
            asyncio.create_task(watch_redis_memory(self.redis), name="redis-memory"),
        ]
        logger.info("dispatcher started: connectors %s", ", ".join(sorted(self.runtimes)))

    async def run_until(self, stop: asyncio.Event) -> None:
        """`start()`, run until `stop` is set, then `stop()`. A loop that ends by itself crashed: its exception is
        raised here (after `stop()`)."""
        await self.start()
        try:
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, *self._loops], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for loop in self._loops:  # a loop that ended by itself crashed: surface its error
                if loop.done() and not loop.cancelled() and loop.exception() is not None:
                    raise loop.exception()  # type: ignore[misc]
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop fetching, let in-flight actions finish for up to `grace_s` (the rest are cancelled: their claims
        expire and they are redelivered), commit what is safe, close clients and connectors."""
        self._stopping.set()
        for loop in self._loops:
            if loop.get_name() != "dispatch-commit":
                loop.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=self.grace_s)
            for task in pending:
                task.cancel()
        for loop in self._loops:
            loop.cancel()
        with contextlib.suppress(Exception):
            await self.commit()
        await self._close()

    async def kill(self) -> None:
        """Crash on purpose (tests): cancel everything, commit nothing, release nothing."""
        self._stopping.set()
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        for consumer in (self.consumer, self.updates_consumer):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        for runtime in self.runtimes.values():
            with contextlib.suppress(Exception):
                await runtime.connector.close()
        if self.redis is not None:
            await self.redis.aclose()

    # --- loops
    async def _consume_loop(self) -> None:
        assert self.consumer is not None
        while not self._stopping.is_set():
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.config.dispatcher.max_inflight)
            except KafkaError as exc:  # the client reconnects by itself; keep polling
                logger.warning("fetching actions failed, retrying: %s", self.redactor.redact(exc))
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    await self._slots.acquire()
                    self.tracker.start(tp, record.offset)
                    self._spawn(self._handle_record(tp, record))

    async def _schedule_loop(self) -> None:
        options = self.config.dispatcher
        lease_ms = int(self.config.policies.idempotency.claim_ttl_s * 1000) * 2
        last_gauge = 0.0
        while not self._stopping.is_set():
            entries = await self._guarded(
                lambda: self.schedule.lease_due(int(time.time() * 1000), options.schedule_batch, lease_ms)
            )
            fresh = [e for e in entries if e.action.action_id not in self._leased]
            for group in in_priority_order(fresh):  # one lead's entries in turn, highest priority first
                await self._slots.acquire()
                self._leased.update(e.action.action_id for e in group)
                self._spawn(self._handle_scheduled_group(group))
            if time.monotonic() - last_gauge >= 1.0:
                DISPATCH_SCHEDULED.set(await self._guarded(self.schedule.size))
                last_gauge = time.monotonic()
            if len(entries) < options.schedule_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), options.schedule_poll_s)

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.dispatcher.commit_interval_s)
            try:
                await self.commit()
            except Exception as exc:  # the next round retries; uncommitted work is only redelivered
                logger.warning("offset commit failed: %s", self.redactor.redact(exc))
            self._export_lag()

    def _export_lag(self) -> None:
        """Backlog of `actions` per partition (a slow peer shows here first); best effort, no broker call."""
        consumer = self.consumer
        if consumer is None:
            return
        committed = self.tracker.committed_offsets()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)  # from the last fetch: no broker round trip
            if highwater is not None and tp in committed:
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - committed[tp]))

    async def commit(self) -> None:
        """Commit the safe offsets (`OffsetTracker.committable`) of the partitions still assigned; raises the
        consumer's error when the broker refuses (the commit loop retries next round)."""
        if self.consumer is None:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in self.tracker.committable().items() if tp in assigned}
        if offsets:
            await self.consumer.commit(offsets)
            self.tracker.committed(offsets)

    # --- handling
    def _spawn(self, coro: object) -> None:
        task = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _guarded(self, step):  # type: ignore[no-untyped-def]
        """Run `step` until it succeeds: Redis or the broker being down delays an action, never loses it."""
        delay = 0.2
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.error("dispatcher step failed, retrying in %.1f s: %s", delay, self.redactor.redact(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _handle_record(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        """Handle one `actions` record to a final or durably scheduled outcome, then mark its offset done. Not
        when cancelled (a stop past its grace period, a kill): its offset must stay uncommitted, so the action is
        redelivered after the restart instead of being skipped by the next commit."""
        await self._handle_action_record(record)
        self.tracker.done(tp, record.offset)

    async def _handle_action_record(self, record: ConsumerRecord) -> None:
        try:
            doc: Any = orjson.loads(record.value)
            action = Action.from_json(doc)
            if not action.action_id or not action.connector:
                raise ValueError("empty action_id or connector")
        except Exception as exc:
            reason = "not_json" if isinstance(exc, ValueError) and "JSON" in type(exc).__name__ else "invalid_action"
            detail = f"{type(exc).__name__}: {exc}"[:300]
            await self._guarded(
                lambda: self.recorder.malformed(
                    record.value, record.key, record.topic, record.partition, record.offset, reason, detail
                )
            )
            return

        # Guarded steps: a failed record write must not run the delivery a second time.
        # The record timestamp is when the worker emitted the action (wall clock; fired_at is event time).
        emitted_ms = record.timestamp if record.timestamp > 0 else action.fired_at_ms
        if not action.held_out:  # a holdout action is only recorded: no owner assigned, no rep notified
            action = await self._guarded(lambda: self.hot_leads.prepare(action))
        job = Job(action, emitted_ms=emitted_ms, expires_at_ms=expires_at_of(action, doc))
        outcome = await self._guarded(lambda: self.deliverer.deliver(job))
        await self._guarded(lambda: self.recorder.record(action, outcome, job.emitted_ms, record.value))

    async def _deliver_note(self, note: Action) -> None:
        """A rep notification from the hot-lead flow: delivered and recorded like any action."""
        emitted_ms = int(time.time() * 1000)
        outcome = await self.deliverer.deliver(Job(note, emitted_ms=emitted_ms))
        await self.recorder.record(note, outcome, emitted_ms)

    async def _publish_update(self, lead_id: str, value: bytes) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.settings.topic(LEAD_UPDATES), value, key=lead_id.encode())

    async def _handle_scheduled_group(self, group: list[ScheduledDelivery]) -> None:
        """One lead's due entries, one after the other in priority order (`in_priority_order`)."""
        try:
            for entry in group:
                await self._handle_scheduled(entry)
        finally:
            self._leased.difference_update(e.action.action_id for e in group)

    async def _handle_scheduled(self, entry: ScheduledDelivery) -> None:
        action = entry.action
        try:
            job = Job(
                action,
                entry.attempts,
                from_schedule=True,
                emitted_ms=entry.emitted_ms,
                expires_at_ms=entry.expires_at_ms if entry.expires_at_ms is not None else expires_at_of(action),
            )
            outcome = await self._guarded(lambda: self.deliverer.deliver(job))
            await self._guarded(lambda: self.recorder.record(action, outcome, job.emitted_ms))
            if outcome.final:
                await self._guarded(lambda: self.schedule.remove(action.action_id, action.lead_id))
        finally:
            self._leased.discard(action.action_id)

    # --- lead-updates: the re-check state
    async def _catch_up_updates(self, session_ms: int) -> None:
        """Apply `lead-updates` up to its end (as of now) before any action is handled. Waits for the group to
        assign partitions (up to three session timeouts: with none assigned, another dispatcher of the group
        applies them to the same Redis), reads to the end offsets, then on until a fetch comes back empty (some
        brokers report end offsets short)."""
        consumer = self.updates_consumer
        assert consumer is not None
        deadline = time.monotonic() + 3 * session_ms / 1000
        applied = 0
        while not consumer.assignment() and time.monotonic() < deadline:
            applied += await self._apply_batch(await consumer.getmany(timeout_ms=200, max_records=500))
        assigned = consumer.assignment()
        if not assigned:
            logger.warning("no lead-updates partition assigned yet; starting without catching up")
            return
        ends = await consumer.end_offsets(list(assigned))
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            applied += await self._apply_batch(batch)
            behind = [tp for tp in consumer.assignment() if await consumer.position(tp) < ends.get(tp, 0)]
            if not batch and not behind:
                break
        await self._commit_updates()
        logger.info("caught up with lead-updates (%d records applied)", applied)

    async def _updates_loop(self) -> None:
        consumer = self.updates_consumer
        assert consumer is not None
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
            except KafkaError as exc:  # the client reconnects by itself; keep polling
                logger.warning("fetching lead-updates failed, retrying: %s", self.redactor.redact(exc))
                await asyncio.sleep(1.0)
                continue
            if await self._apply_batch(batch):
                await self._commit_updates()

    async def _apply_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> int:
        count = 0
        for records in batch.values():
            for record in records:
                await self._guarded(lambda record=record: self._apply_update(record))  # type: ignore[misc]
                count += 1
        return count

    async def _commit_updates(self) -> None:
        consumer = self.updates_consumer
        if consumer is None:
            return
        try:
            await consumer.commit()
        except Exception as exc:  # a rebalance or a broker hiccup: the records are applied again (idempotent)
            logger.warning("lead-updates commit failed: %s", self.redactor.redact(exc))

    async def _apply_update(self, record: ConsumerRecord) -> None:
        """Fold one `lead-updates` record into the re-check state; a withdrawal of consent (a conversion) then
        brings the lead's waiting marketing actions (that rule's earlier actions) forward in the schedule."""
        try:
            update: LeadUpdate = parse_update(record.value, record.key)
        except NotARecheckUpdate as exc:
            DISPATCH_LEAD_UPDATES.labels("ignored" if exc.reason == "other_kind" else "invalid").inc()
            return
        await self.recheck.apply(update)
        now = int(time.time() * 1000)
        if isinstance(update, Converted):
            DISPATCH_LEAD_UPDATES.labels("converted").inc()
            moved = await self.schedule.bring_forward_rule(update.lead_id, update.rule, update.at_ms, now)
        elif isinstance(update, ConsentChange) and not update.marketing:
            DISPATCH_LEAD_UPDATES.labels("consent_withdrawn").inc()
            moved = await self.schedule.bring_forward_marketing(update.lead_id, now)
        else:
            DISPATCH_LEAD_UPDATES.labels("consent_given").inc()
            moved = 0
        if moved:
            kind = type(update).__name__
            logger.info("%s of lead %s: %d waiting actions re-checked now", kind, update.lead_id, moved)
