"""The ClickHouse sink of `nudge sink`: Kafka topics → batched, deduplicated inserts, offsets committed only after
ClickHouse accepted them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DataError

from engine import metrics
from engine.clickhouse.client import ClickHouseUnavailable, connect, is_embedded
from engine.clickhouse.erasure import erase_rows, write_receipt
from engine.clickhouse.migrations import apply_retention, migrate
from engine.clickhouse.rows import COLUMNS, Record, UnstorableRecord, to_row
from engine.config import Settings
from engine.kafka import admin as kafka_admin
from engine.kafka import topics
from engine.kafka.admin import bootstrap_servers
from engine.kafka.security import client_options
from engine.privacy.records import BadPrivacyRecord, DeleteOrder, Receipt, parse_control

log = logging.getLogger(__name__)

# Raised while encoding rows on the client: the data, not ClickHouse, is at fault, so retrying cannot help.
BAD_DATA_ERRORS = (DataError, TypeError, ValueError, OverflowError, struct.error)

SINK_TOPICS = (
    topics.CLICKSTREAM,
    topics.ACTIONS,
    topics.DELIVERIES,
    topics.DEAD_LETTERS,
    topics.LEAD_UPDATES,
)


async def ensure_topics(settings: Settings, names: tuple[str, ...] = (*SINK_TOPICS, topics.PRIVACY)) -> None:
    """Create the topics the sink reads if they do not exist yet (a fresh broker, a new topic prefix)."""
    await kafka_admin.ensure_topics(settings, names)


@dataclass
class Batch:
    """Rows waiting for ClickHouse and the Kafka positions they cover (first/last offset per partition)."""

    rows: dict[str, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    records: int = 0
    opened_at: float = 0.0  # monotonic time of the first record
    inserted: set[str] = field(default_factory=set)  # tables already accepted (a retry skips them)

    def add(self, tp: TopicPartition, offset: int, table: str | None, row: list[Any] | None) -> None:
        if not self.records:
            self.opened_at = time.monotonic()
        self.records += 1
        first, _ = self.ranges.get(tp, (offset, offset))
        self.ranges[tp] = (first, offset)
        if table is not None and row is not None:
            self.rows[table].append(row)

    def token(self, table: str) -> str:
        """Same batch → same token; ClickHouse drops an insert whose token it has seen (dedup window)."""
        spans = ",".join(f"{tp.topic}/{tp.partition}:{a}-{b}" for tp, (a, b) in sorted(self.ranges.items()))
        return f"nudge-sink:{table}:{hashlib.sha1(spans.encode()).hexdigest()}"

    def commit_offsets(self) -> dict[TopicPartition, int]:
        return {tp: last + 1 for tp, (_, last) in self.ranges.items()}


class Sink:
    """Kafka → ClickHouse writer: `await Sink(settings).run(stop)`. The one process that owns an embedded chDB
    store (chDB allows one process per path).

    Consumes `clickstream`, `actions`, `deliveries`, `dead-letters` and `lead-updates` (consumer group
    `<app_id>-sink`, from the earliest offset when the group is new) and writes `events`, `actions`,
    `dead_letters` and `lead_updates` rows (`engine.clickhouse.rows`).

    Batching: a batch closes at `max_rows` records or `max_wait_s` after its first record, whichever comes first.

    Commit and idempotency: each table's rows are inserted with an `insert_deduplication_token` derived from the
    batch's offset ranges, so an insert retried after an ambiguous failure (a timeout after the server wrote it)
    is dropped by ClickHouse. Offsets are committed only after every table of the batch was accepted: a crash
    before the commit re-reads the batch, and the re-inserted rows (possibly cut differently, so with another
    token) collapse with the first copy because every table is a ReplacingMergeTree keyed by a natural id and
    queries read `FINAL`. At-least-once into an idempotent store: nothing lost, nothing counted twice.

    Back-pressure: ClickHouse down or refusing → the insert is retried with exponential backoff
    (`backoff_initial_s` doubling up to `backoff_max_s`) forever; meanwhile every assigned partition is paused, so
    the sink stops consuming (the backlog waits in Kafka, not in memory) while still polling so the group does not
    evict it. A rebalance during an outage gives up the unwritten batch; it is read again from the committed
    offsets.

    Errors: records it cannot store (invalid events, which the worker dead-letters; malformed JSON) are skipped
    and counted in `nudge_sink_skipped_records_total`, their offsets committed with the batch. A row the client
    cannot encode for its column (say a priority beyond Int16) is found by bisecting the insert, skipped and
    counted (`reason="rejected_row"`, `topic` = the table): one bad record never blocks the sink. A locked
    embedded store raises `ClickHouseUnavailable` (waiting would not heal it).

    Privacy: the sink also reads `privacy` (`engine.privacy.records`) and acts on the coordinator's
    `DeleteOrder`s there: once the batch in hand is written, it deletes the lead's rows from every table
    (`engine.clickhouse.erasure`), keeps the erasure receipt and answers with a `Receipt`. An order that fails
    (ClickHouse down) is retried on the next round; one lost in a crash is sent again by the coordinator. At start
    it sets the tables' TTLs to `NUDGE_RETENTION_DAYS` / `NUDGE_ACTIONS_RETENTION_DAYS` when they differ.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connect_fn: Callable[[], Client] | None = None,
        max_rows: int = 5000,
        max_wait_s: float = 1.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self._connect_fn = connect_fn or (lambda: connect(settings.clickhouse_dsn))
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.group_id = group_id or f"{settings.app_id}-sink"
        self._kinds = {settings.topic(name): name for name in SINK_TOPICS}
        self._privacy_topic = settings.topic(topics.PRIVACY)
        self._orders: list[DeleteOrder] = []
        self._producer: AIOKafkaProducer | None = None
        self._orders_retry_at = 0.0
        self._client: Client | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._batch = Batch()
        self._lock = asyncio.Lock()
        self._reseek = False
        self._held: list[dict[TopicPartition, list[Any]]] = []
        self.batches_committed = 0
        self.rows_written = 0  # rows ClickHouse accepted (a re-inserted batch counts again)

    # --- what tests and operators may observe ----------------------------------------------------------

    @property
    def records_in_hand(self) -> int:
        """Records read but not yet written (the open batch)."""
        return self._batch.records

    @property
    def holding_back(self) -> bool:
        """Whether fetched records wait outside the batch (ClickHouse is slow or down: back-pressure)."""
        return bool(self._held)

    @property
    def assignment(self) -> set[TopicPartition]:
        """Partitions this sink consumes now (empty before it joined its group)."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    @property
    def paused(self) -> bool:
        """Whether fetching is paused (a batch ClickHouse has not taken is held)."""
        return self._consumer is not None and bool(self._consumer.paused())

    # --- ClickHouse ---------------------------------------------------------------------------------------

    def _open_client(self) -> Client:
        if self._client is None:
            client = self._connect_fn()
            migrate(client)
            apply_retention(client, self.settings.retention_days, self.settings.actions_retention_days)
            self._client = client
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken connection must not mask the insert error
                log.debug("closing the ClickHouse client failed", exc_info=True)

    def _insert(self, table: str, rows: list[list[Any]], token: str) -> None:
        client = self._open_client()
        started = time.perf_counter()
        client.insert(
            table, rows, column_names=COLUMNS[table], settings={"insert_deduplication_token": token}
        )
        metrics.CLICKHOUSE_INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        metrics.CLICKHOUSE_ROWS.labels(table).inc(len(rows))
        self.rows_written += len(rows)

    def insert_rows(self, table: str, rows: list[list[Any]], token: str) -> None:
        """Insert; if the client cannot encode some rows (a value outside its column type), bisect to find
        them, skip and count them, and insert the rest. Sub-inserts get derived tokens, so a retry stays
        idempotent. Transport and server errors propagate (they are retried whole)."""
        self._open_client()  # outside the try: a connection or migration error is never "bad data"
        try:
            self._insert(table, rows, token)
        except BAD_DATA_ERRORS as exc:
            if len(rows) == 1:
                # Not the row itself: it can hold personal data (traits, emails) and logs are kept elsewhere.
                log.error(
                    "skipping a row ClickHouse cannot take into %s: %s (%d columns)", table, type(exc).__name__,
                    len(rows[0]),
                )
                metrics.SINK_SKIPPED.labels(table, "rejected_row").inc()
                return
            middle = len(rows) // 2
            self.insert_rows(table, rows[:middle], f"{token}:a")
            self.insert_rows(table, rows[middle:], f"{token}:b")

    async def _insert_with_retry(self, batch: Batch, table: str, stop: asyncio.Event) -> bool:
        """Insert until accepted (True), or until stopping or a rebalance takes the batch away (False)."""
        rows, token = batch.rows[table], batch.token(table)
        delay = self.backoff_initial_s
        while True:
            try:
                await asyncio.to_thread(self.insert_rows, table, rows, token)
                return True
            except ClickHouseUnavailable as exc:
                if is_embedded(self.settings.clickhouse_dsn) and "another process" in str(exc):
                    raise  # a locked chDB path does not heal by waiting
                error: Exception = exc
            except Exception as exc:  # any ClickHouse/transport error: the batch stays, we retry
                error = exc
            metrics.CLICKHOUSE_ERRORS.labels(table).inc()
            log.warning("ClickHouse insert into %s failed (%s); retrying in %.1fs", table, error, delay)
            self._drop_client()
            self._pause(True)
            if stop.is_set() or self._reseek or self._batch is not batch:
                return False
            await self._idle(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _idle(self, seconds: float) -> None:
        """Wait while keeping the consumer polling (partitions are paused, so this fetches nothing)."""
        if self._consumer is None:
            await asyncio.sleep(seconds)
            return
        data = await self._consumer.getmany(timeout_ms=int(seconds * 1000))
        if data:  # e.g. a partition assigned during the outage: it goes to the next batch, not this one
            self._held.append(data)

    def _pause(self, paused: bool) -> None:
        if self._consumer is None:
            return
        assigned = self._consumer.assignment()
        if paused:
            self._consumer.pause(*assigned)
        else:
            self._consumer.resume(*assigned)

    # --- batching -----------------------------------------------------------------------------------------

    def _add(self, data: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in data.items():
            if tp.topic == self._privacy_topic:
                for msg in messages:
                    self._control(msg.value)
                    self._batch.add(tp, msg.offset, None, None)
                continue
            kind = self._kinds[tp.topic]
            for msg in messages:
                record = Record(kind, tp.partition, msg.offset, msg.timestamp, msg.key, msg.value)
                try:
                    table, row = to_row(record)
                except UnstorableRecord as exc:
                    metrics.SINK_SKIPPED.labels(kind, exc.reason).inc()
                    self._batch.add(tp, msg.offset, None, None)
                    continue
                self._batch.add(tp, msg.offset, table, row)
        for table in COLUMNS:
            metrics.SINK_BUFFERED_ROWS.labels(table).set(len(self._batch.rows.get(table, ())))

    def _control(self, value: bytes | None) -> None:
        """A `privacy` record: keep a delete order for `_run_orders`; receipts are the coordinator's."""
        try:
            found = parse_control(value)
        except BadPrivacyRecord:
            metrics.SINK_SKIPPED.labels(topics.PRIVACY, "not_privacy_record").inc()
            return
        if isinstance(found, DeleteOrder) and all(o.request_id != found.request_id for o in self._orders):
            self._orders.append(found)

    async def _run_orders(self, stop: asyncio.Event) -> None:
        """Carry out the delete orders in hand, after writing the batch in hand (rows read before an order are
        in the store when it runs). An order that fails stays for the next round (after a backoff)."""
        if not self._orders or time.monotonic() < self._orders_retry_at or not await self.flush(stop):
            return
        while self._orders:
            order = self._orders[0]
            try:
                client = await asyncio.to_thread(self._open_client)
                erased = await asyncio.to_thread(erase_rows, client, order.ids, order.terms)
                await asyncio.to_thread(write_receipt, client, order, erased.counts)
                await self._answer(Receipt("clickhouse", order.request_id, erased.counts, -1, erased.action_ids))
            except Exception as exc:  # ClickHouse or the broker down: the order waits, fetching goes on
                log.warning("privacy request %s: ClickHouse erasure failed (%s); retrying", order.request_id, exc)
                self._drop_client()
                self._orders_retry_at = time.monotonic() + self.backoff_max_s
                return
            self._orders.pop(0)
            log.info("privacy request %s: rows erased from ClickHouse: %s", order.request_id, erased.counts)

    async def _answer(self, receipt: Receipt) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(self.settings), acks="all", **client_options(self.settings)
            )
            await producer.start()
            self._producer = producer
        await self._producer.send_and_wait(self._privacy_topic, receipt.to_bytes(), key=receipt.request_id.encode())

    def _take(self, data: dict[TopicPartition, list[Any]]) -> None:
        """Add records to the open batch, after any held back while a flush was retrying (offset order)."""
        held, self._held = self._held, []
        for earlier in held:
            self._add(earlier)
        self._add(data)

    def _due(self) -> bool:
        batch = self._batch
        return batch.records >= self.max_rows or (
            batch.records > 0 and time.monotonic() - batch.opened_at >= self.max_wait_s
        )

    async def flush(self, stop: asyncio.Event) -> bool:
        """Insert each table of the open batch (retrying while ClickHouse is down, see the class), then commit its
        offsets. False: the batch was not written (stopping, or a rebalance took it away)."""
        async with self._lock:
            batch = self._batch
            if not batch.records:
                return True
            for table, rows in list(batch.rows.items()):
                if table in batch.inserted or not rows:
                    continue
                if not await self._insert_with_retry(batch, table, stop):
                    return False
                if self._batch is not batch:
                    return False  # a rebalance discarded it; its rows are re-read and deduplicated
                batch.inserted.add(table)
            await self._commit(batch.commit_offsets())
            self._batch = Batch()
            self.batches_committed += 1
            for table in COLUMNS:
                metrics.SINK_BUFFERED_ROWS.labels(table).set(0)
            self._pause(False)
            self._take({})
            return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Rows are in ClickHouse; whoever owns the partitions now re-reads them and the store dedups them.
            log.warning("offset commit failed after a successful insert (%s); the batch will be re-read", exc)

    # --- rebalances ---------------------------------------------------------------------------------------

    def _listener(self) -> ConsumerRebalanceListener:
        sink = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                if sink._batch.records and not sink._lock.locked():
                    bounded = asyncio.Event()
                    bounded.set()  # one attempt only: a rebalance must not wait for ClickHouse
                    if await sink.flush(bounded):
                        return
                if sink._batch.records:
                    # Not written: forget it and read it again from the committed offsets.
                    log.warning("rebalance: giving up an unwritten batch of %d records", sink._batch.records)
                    sink._reseek = True

            async def on_partitions_assigned(self, assigned: Any) -> None:
                if sink._reseek and sink._consumer is not None:
                    sink._batch = Batch()
                    sink._held = []
                    await sink._consumer.seek_to_committed()
                    sink._reseek = False

        return _Listener()

    # --- main loop ----------------------------------------------------------------------------------------

    async def _open(self, stop: asyncio.Event) -> bool:
        """Open ClickHouse (waiting for a server that is down) and the consumer; False if stopped first."""
        delay = self.backoff_initial_s
        while True:
            try:
                await asyncio.to_thread(self._open_client)
                break
            except ClickHouseUnavailable as exc:
                if is_embedded(self.settings.clickhouse_dsn):
                    raise  # an embedded store is never "down": it is locked or misconfigured
                metrics.CLICKHOUSE_ERRORS.labels("connect").inc()
                log.warning("ClickHouse is not reachable (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return False
                delay = min(delay * 2, self.backoff_max_s)
        await ensure_topics(self.settings)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(self.settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_rows,
            fetch_max_bytes=16 * 1024 * 1024,
            **self._group_timing(),
            **client_options(self.settings),
        )
        self._consumer.subscribe([*self._kinds, self._privacy_topic], listener=self._listener())
        await self._consumer.start()
        return True

    def _group_timing(self) -> dict[str, int]:
        """Tansu (dev profile) completes a JoinGroup only after session_timeout/2: keep sessions short."""
        if self.settings.broker_profile == "dev":
            return {"session_timeout_ms": 3000, "heartbeat_interval_ms": 800, "rebalance_timeout_ms": 3000}
        return {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume and write until `stop` is set. On the way out the current batch is flushed when ClickHouse
        accepts it; if ClickHouse is down it is abandoned uncommitted (read again on the next start). Closes the
        consumer and the client in any case."""
        stop = stop or asyncio.Event()
        try:
            if not await self._open(stop):
                return
            assert self._consumer is not None
            while not stop.is_set():
                if paused := self._consumer.paused():
                    self._consumer.resume(*paused)  # a flush given up on (rebalance) must not leave a pause
                room = self.max_rows - self._batch.records
                wait_s = self.max_wait_s
                if self._batch.records:
                    wait_s = max(0.0, self._batch.opened_at + self.max_wait_s - time.monotonic())
                data = await self._consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=max(room, 1))
                self._take(data)
                if self._due():
                    await self.flush(stop)
                if self._orders:
                    await self._run_orders(stop)
            await self.flush(stop)
        finally:
            await self.close()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        await asyncio.to_thread(self._drop_client)
