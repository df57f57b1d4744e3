"""Table recovery that reads the changelog with a plain aiokafka consumer before Faust's own recovery loop runs.

Why: Faust recovers a table one record at a time through its stream machinery (a `Message` and an `Event` per
record, a queue hop, bookkeeping per record), about 17k records/s on the benchmark machine: a worker restarting
with 1M leads spent 60 of its 70 s there (bench/FINDINGS.md, "State at store scale"). Reading the same records
with a plain consumer and writing them into the memory store directly costs a fraction of that.

What stays Faust's: which partitions are recovered, from which offset, up to which highwater, the consistency
check, seeking, pausing and resuming, standbys, and the recovery callbacks. The read-ahead only advances Faust's
own per-partition "offset read" bookkeeping; whatever it did not read (a table it does not handle, a time budget
spent, a partition that stalled) Faust's loop reads from there exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, MutableMapping, Set
from typing import Any

import aiokafka
from aiokafka.structs import TopicPartition
from faust.stores.memory import Store as MemoryStore
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP

from engine.worker.gc_tuning import collector_paused

log = logging.getLogger("nudge.worker.recovery")

_MIB = 1024 * 1024
# Faust wraps the step this runs in (`_seek_offsets`) in a timeout of `broker_request_timeout`, and a timeout
# there ends its recovery service: the read-ahead stops well before and leaves the rest to Faust's loop.
BUDGET_SHARE_OF_REQUEST_TIMEOUT = 0.5
FETCH_WAIT_MS = 20  # short: the reader stops at the highwater and never waits for new records


def reads_ahead(table: Any) -> bool:
    """Whether the read-ahead can recover `table`: a memory store, raw bytes keys and values (the stored value is
    the record's value as is), and no per-record changelog callback (Faust would call it for each record)."""
    return (
        isinstance(table.data, MemoryStore)
        and table.key_serializer == "raw"
        and table.value_serializer == "raw"
        and getattr(table, "_on_changelog_event", None) is None
    )


def faust_client_options(app: Any) -> Mapping[str, Any]:
    """The security options of the Faust app's own clients, for a plain aiokafka client of the same app: Faust's
    driver derives them from `broker_credentials`, which `broker_profiles.faust_security` sets from the
    `NUDGE_KAFKA_*` settings (tests/kafka/test_security.py checks they equal `engine.kafka.security.client_options`)."""
    return credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)


def apply_records(store: MemoryStore, partition: int, records: Iterable[Any]) -> None:
    """Write changelog records into a memory store as Faust's `Store.apply_changelog_batch` does for raw keys
    and values: in offset order the last value wins, a tombstone (value None) deletes the key, and the key's
    changelog partition is remembered (`_key_partition`: the store drops keys of partitions not assigned when
    recovery completes, and the worker rebuilds its deadline index from it)."""
    data = store.data
    key_partition = store._key_partition
    for record in records:
        key = record.key
        if key is None:
            continue  # a table's changelog record always has a key; Faust would fail on this one
        if record.value is None:
            data.pop(key, None)
            key_partition.pop(key, None)
        else:
            data[key] = record.value
            key_partition[key] = partition


async def _stop(reader: aiokafka.AIOKafkaConsumer) -> None:
    try:
        await reader.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this step is being cancelled (a new rebalance)
        # aiokafka 0.14: a consumer without a group stopped before its first fetch re-raises the cancellation of
        # its own internal task (`NoGroupCoordinator._reset_committed_task`); nothing here was cancelled.


class ChangelogReadAheadRecovery(Recovery):
    """Faust's `Recovery`; before Faust seeks the active changelog partitions, `read_ahead` brings them up to the
    highwater Faust just measured. Offsets keep Faust's meaning: `active_offsets[tp]` is the last offset applied to
    the table (-1: none), Faust reads from there on (and re-reads that one record, which it skips)."""

    async def _seek_offsets(self, consumer: Any, tps: Set[TP], offsets: Any, title: str) -> None:
        # Called for actives after their highwaters and start offsets are built and checked, and for standbys
        # later: only actives are read ahead (standbys are kept up to date by Faust while the worker runs).
        if title == "active":
            await self.read_ahead(tps, offsets)
        await super()._seek_offsets(consumer, tps, offsets, title)

    async def read_ahead(self, tps: Set[TP], offsets: MutableMapping[TP, Any]) -> None:
        """Read each partition in `tps` of a table `reads_ahead` accepts, from after `offsets[tp]` up to and
        including `active_highwaters[tp]`, into the table's store; `offsets[tp]` follows every applied record, so
        a cancellation (a new rebalance: Faust cancels this step) leaves Faust's bookkeeping consistent. Stops at
        the time budget; partitions not finished are left to Faust's loop. Records past the highwater that arrive
        in the same fetch are applied too (they are in the log; on Tansu the measured highwater can fall short of
        the end, dev-stack.md) but not counted past it, so Faust's consistency check still holds."""
        highwaters = self.active_highwaters
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            highwater, offset = highwaters.get(tp), offsets.get(tp)
            table = self.tp_to_table.get(tp)
            start = -1 if offset is None else offset
            if table is not None and highwater is not None and start < highwater and reads_ahead(table):
                todo[TopicPartition(tp.topic, tp.partition)] = start
        if not todo:
            return
        conf = self.app.conf
        budget_s = conf.broker_request_timeout * BUDGET_SHARE_OF_REQUEST_TIMEOUT
        started = time.monotonic()
        transport = self.app.transport
        reader = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=server_list(transport.url, transport.default_port),
            client_id=f"{conf.broker_client_id}-recovery",
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * _MIB,
            fetch_max_bytes=64 * _MIB,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            request_timeout_ms=int(conf.broker_request_timeout * 1000),
            **faust_client_options(self.app),
        )
        applied = 0
        await reader.start()
        try:
            reader.assign(list(todo))
            for partition, start in todo.items():
                reader.seek(partition, start + 1)
            with collector_paused():  # a bulk pass: see engine/worker/gc_tuning.py
                while todo and time.monotonic() - started < budget_s:
                    fetched = await reader.getmany(timeout_ms=200)
                    for partition, records in fetched.items():
                        tp = TP(partition.topic, partition.partition)
                        if partition not in todo or not records:
                            continue
                        apply_records(self.tp_to_table[tp].data, partition.partition, records)
                        applied += len(records)
                        offsets[tp] = min(records[-1].offset, highwaters[tp])
                    for partition in list(todo):
                        tp = TP(partition.topic, partition.partition)
                        # The position, not the last record: compaction can leave the highwater's record out.
                        if offsets[tp] >= highwaters[tp] or await reader.position(partition) > highwaters[tp]:
                            offsets[tp] = highwaters[tp]
                            del todo[partition]
                            reader.pause(partition)
        finally:
            await _stop(reader)
        elapsed = time.monotonic() - started
        log.info(
            "changelog read ahead: %d records in %.1f s (%.0f/s)%s",
            applied,
            elapsed,
            applied / elapsed if elapsed > 0 else 0.0,
            f"; {len(todo)} partition(s) left to Faust's recovery (budget {budget_s:.0f} s)" if todo else "",
        )


class ReadAheadTableManager(TableManager):
    """Faust's `TableManager` whose recovery service is `ChangelogReadAheadRecovery` (Faust builds it lazily in
    the `recovery` property, the one place it is created)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = ChangelogReadAheadRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
