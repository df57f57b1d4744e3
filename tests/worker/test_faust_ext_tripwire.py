"""Tripwire for engine/worker/faust_ext: the exact faust-streaming and aiokafka versions it was written against,
and every private attribute or undocumented behaviour of Faust, mode and aiokafka it relies on, checked for shape.

An upgrade that changes any of them fails here, in one place, before it can fail in production. When it does:
read the new library code, adapt the faust_ext module named in the failing test, then update the pins in
pyproject.toml and the expectations here (and the list in engine/worker/faust_ext/__init__.py).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiokafka
import aiokafka.client
import faust
import faust.channels
import faust.streams
import faust.tables
import faust.tables.base
import faust.tables.recovery
import faust.topics
import faust.transport.conductor
import faust.transport.consumer
import faust.types.settings
import mode
import mode.threads
import mode.utils.queues
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.stores import memory
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pins() -> dict[str, str]:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = {}
    for requirement in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _source(function: Callable[..., Any]) -> str:
    """The function's source with whitespace runs collapsed, so reformatting upstream does not trip the wire."""
    return re.sub(r"\s+", " ", inspect.getsource(function))


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- the pins ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["faust-streaming", "mode-streaming", "aiokafka"])
def test_installed_version_is_the_exact_pin(distribution: str) -> None:
    pins = _pins()
    assert distribution in pins, f"pin {distribution} exactly (==) in pyproject.toml: faust_ext uses its internals"
    assert version(distribution) == pins[distribution], (
        f"{distribution} {version(distribution)} is installed, faust_ext was checked against {pins[distribution]}"
    )


# --- fast_delivery ----------------------------------------------------------------------------------------------


def test_drain_loop_delivers_through_wait_first_with_the_suspension_coroutine() -> None:
    """`FastDeliveryConsumer.wait_first` takes its fast path for exactly this call of the private drain loop."""
    drain = _source(faust.transport.consumer.Consumer._drain_messages)
    assert "await self.wait_first( callback(message), self.suspend_flow.wait() )" in drain


def test_fetch_waits_on_the_active_partitions_and_holds_back_partitions_of_a_full_queue() -> None:
    """`FastDeliveryConsumer._wait_next_records` shortens Faust's wait while partitions are held back."""
    consumer = faust.transport.consumer.Consumer
    assert _parameters(consumer._wait_next_records) == ["self", "timeout"]
    wait = _source(consumer._wait_next_records)
    assert "active_partitions = self._get_active_partitions()" in wait
    assert "records = await self._getmany( active_partitions=active_partitions, timeout=timeout, )" in wait
    assert "await self.sleep(1)" in wait
    assert "records, active_partitions = await self._wait_next_records(timeout)" in _source(consumer.getmany)
    full, drop = _source(consumer.on_buffer_full), _source(consumer.on_buffer_drop)
    assert "active_partitions.discard(tp) self._buffered_partitions.add(tp)" in full
    assert "active_partitions.add(tp) buffered_partitions.discard(tp)" in drop
    queues = _source(mode.utils.queues.FlowControlQueue.maybe_endorse_pressure_drop)
    assert "pressure_drop_callback()" in queues


def test_getmany_is_what_the_bulk_delivery_replaces() -> None:
    """`FastDeliveryConsumer.getmany` replaces Faust's: the drain loop iterates it for `(tp, message)` pairs and drops
    records below `_read_offset`; Faust's checks the override repeats per partition are these; the conductor's
    per-record delivery that `_deliver_bulk` does once per partition awaits flow control and the producer's buffer
    and reports queue pressure through these callbacks."""
    consumer = faust.transport.consumer.Consumer
    drain = _source(consumer._drain_messages)
    assert "ait = cast(AsyncIterator, getmany(timeout=1.0))" in drain
    assert "async for tp, message in ait:" in drain
    assert "get_read_offset = self._read_offset.__getitem__" in drain
    assert "if r_offset is None or offset >= r_offset:" in drain
    assert "set_read_offset(tp, offset)" in drain
    getmany = _source(consumer.getmany)
    for fragment in (
        "generation_id = self.app.consumer_generation_id if records is None or self.should_stop: return",
        "if new_generation_id != generation_id:",
        "active_partitions is None or tp in active_partitions or tp in self._buffered_partitions",
        "self.app.monitor.track_tp_end_offset(tp, highwater_mark)",
        "yield tp, to_message(tp, record)",
        "await self.perform_seek()",
    ):
        assert fragment in getmany, fragment
    assert _parameters(faust_aiokafka.Consumer._to_message) == ["self", "tp", "record"]
    handler = _source(faust.transport.conductor.ConductorCompiler.build)
    for fragment in (
        "await acquire_flow_control() await wait_until_producer_ebb()",
        "on_topic_buffer_full(tp) consumer_on_buffer_full(tp)",
        "consumer_on_buffer_drop(tp)",
        "await asyncio.wait( [ asyncio.ensure_future(dest_chan.put(dest_event))",
    ):
        assert fragment in handler, fragment
    assert "on_pressure_high" in _parameters(mode.utils.queues.FlowControlQueue.put_nowait_enhanced)
    assert "pending.add(callback)" in _source(mode.utils.queues.FlowControlQueue.in_pressure_high_state)


def test_queue_get_is_what_the_bulk_take_repeats() -> None:
    """`batched_input.take_queued` takes records off mode's `FlowControlQueue` in bulk: it repeats what
    `get_nowait` does per record (mode: endorse pressure drops; asyncio: take from `_queue`, wake one of
    `_putters`)."""
    mode_get = _source(mode.utils.queues.FlowControlQueue.get_nowait)
    assert "self.maybe_endorse_pressure_drop() return cast(_T, super().get_nowait())" in mode_get
    asyncio_get = _source(asyncio.Queue.get_nowait)
    assert "item = self._get() self._wakeup_next(self._putters) return item" in asyncio_get
    assert "return self._queue.popleft()" in _source(asyncio.Queue._get)
    endorse = _source(mode.utils.queues.FlowControlQueue.maybe_endorse_pressure_drop)
    assert "pending = self._pending_pressure_drop_callbacks" in endorse
    assert "if size <= pressure_drop_size:" in endorse
    assert "pressure_drop_size" in vars(mode.utils.queues.FlowControlQueue)


def test_mode_wait_first_signature_and_results() -> None:
    assert _parameters(mode.Service.wait_first) == ["self", "coros", "timeout"]
    assert mode.services.WaitResults._fields == ("done", "results", "stopped")


def test_mode_service_keeps_stopped_and_crashed_events() -> None:
    service = mode.Service()
    for name in ("_stopped", "_crashed"):
        event = getattr(service, name)
        assert callable(event.is_set) and callable(event.wait) and not event.is_set()


def test_app_builds_its_transport_through_new_transport() -> None:
    assert _parameters(faust.App._new_transport) == ["self"]
    assert "self._transport = self._new_transport()" in _source(faust.App.transport.fget)
    assert "transport.by_url(self.conf.broker_consumer[0])" in _source(faust.App._new_transport)
    assert isinstance(faust_aiokafka.Transport.Consumer, type)  # the class attribute fast_delivery_transport swaps


# --- batched_output ---------------------------------------------------------------------------------------------


def test_faust_producer_exposes_its_aiokafka_producer() -> None:
    ensure = faust_aiokafka.Producer._ensure_producer
    assert _parameters(ensure) == ["self"]
    assert "return self._producer" in _source(ensure)


def test_aiokafka_client_waits_on_metadata_per_topic() -> None:
    wait = aiokafka.client.AIOKafkaClient._wait_on_metadata
    assert inspect.iscoroutinefunction(wait)
    assert _parameters(wait) == ["self", "topic"]


def test_aiokafka_batch_api_shape() -> None:
    assert _parameters(aiokafka.AIOKafkaProducer.create_batch) == ["self"]
    assert _parameters(aiokafka.AIOKafkaProducer.send_batch)[:4] == ["self", "batch", "topic", "partition"]
    builder = BatchBuilder(batch_size=64, compression_type=0)
    assert builder.append(key=b"k", value=b"v" * 10, timestamp=None) is not None
    assert builder.append(key=b"k", value=b"v" * 100, timestamp=None) is None  # full: OutputBatch starts a new one


# --- broker_profiles --------------------------------------------------------------------------------------------


def test_faust_creates_its_consumer_through_the_aiokafka_module_attribute() -> None:
    """`install_broker_workarounds` replaces `aiokafka.AIOKafkaConsumer`; Faust must look it up at call time and
    pass the fetch wait the replacement caps."""
    assert faust_aiokafka.aiokafka is aiokafka
    create = _source(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert "return aiokafka.AIOKafkaConsumer(" in create
    assert "fetch_max_wait_ms=1500" in create
    assert "fetch_max_wait_ms" in inspect.signature(aiokafka.AIOKafkaConsumer.__init__).parameters


# --- private_state ----------------------------------------------------------------------------------------------


def test_memory_store_remembers_the_partition_of_recovered_keys() -> None:
    store = memory.Store.__new__(memory.Store)  # no app needed for the part the worker reads
    store.__post_init__()
    event = SimpleNamespace(key=b"lead", value=b"{}", message=SimpleNamespace(value=b"{}", partition=3))
    store.apply_changelog_batch([event], to_key=lambda key: key, to_value=lambda value: value)
    assert store._key_partition == {b"lead": 3}
    assert store.data == {b"lead": b"{}"}


# --- changelog_read_ahead ---------------------------------------------------------------------------------------


def test_recovery_seeks_the_actives_after_building_and_checking_their_offsets() -> None:
    """`ChangelogReadAheadRecovery._seek_offsets` reads ahead when Faust seeks the actives: their highwaters and
    start offsets are built and checked by then, and the step runs under the request timeout it budgets for."""
    assert _parameters(faust.tables.recovery.Recovery._seek_offsets) == ["self", "consumer", "tps", "offsets", "title"]
    restart = _source(faust.tables.recovery.Recovery._restart_recovery.fun)  # a mode ServiceTask
    seek_actives = 'T(self._seek_offsets)( consumer, assigned_active_tps, active_offsets, "active" ), ' \
        "timeout=self.app.conf.broker_request_timeout,"
    assert seek_actives in restart
    order = [restart.index(part) for part in ("_build_highwaters", "T(self._build_offsets)", "ConsistencyError",
                                              seek_actives, "if self.need_recovery():")]
    assert order == sorted(order)
    assert "highwater - offsets[tp]" in _source(faust.tables.recovery.Recovery.active_remaining)
    init = _source(faust.tables.recovery.Recovery.__init__)
    assert all(name in init for name in ("self.active_highwaters = Counter()", "self.tp_to_table = {}"))
    assert "if self.signal_recovery_start.is_set():" in restart  # a new rebalance cancels the step


def test_table_manager_builds_its_recovery_in_the_recovery_property() -> None:
    recovery = _source(faust.tables.TableManager.recovery.fget)
    built = "if self._recovery is None: self._recovery = Recovery( self.app, self, beacon=self.beacon, loop=self.loop )"
    assert built in recovery
    assert "TableManager" in faust.types.settings.Settings.__dict__  # the setting NudgeFaustApp fills


def test_table_serializers_and_driver_helpers_the_read_ahead_uses() -> None:
    assert "if typ is bytes: return \"raw\"" in _source(faust.tables.base.Collection._serializer_from_type)
    assert _parameters(faust_aiokafka.credentials_to_aiokafka_auth) == ["credentials", "ssl_context"]
    assert _parameters(faust_aiokafka.server_list) == ["urls", "default_port"]
    batch = _source(memory.Store._create_batch_iterator)
    assert "self._key_partition[key] = event.message.partition" in batch  # what apply_records mirrors


# --- batched_input ----------------------------------------------------------------------------------------------


def test_topic_decodes_with_the_compiled_schema() -> None:
    """`MessageSchema.compile` returns a decoder that hands back the `Message`; Faust must call it so."""
    assert "self._compile_decode()" in _source(faust.topics.Topic.__init__)
    assert "self.decode = self.schema.compile(" in _source(faust.topics.Topic._compile_decode)
    assert _parameters(faust.Schema.compile) == [
        "self",
        "app",
        "on_key_decode_error",
        "on_value_decode_error",
        "default_propagate",
    ]


def test_conductor_puts_the_decoded_value_on_the_channel_queue() -> None:
    handler = _source(faust.transport.conductor.ConductorCompiler.build)
    assert "event = await chan.decode(message, propagate=True)" in handler
    assert "queue.put_nowait_enhanced(" in handler
    assert "is_iterator" in _parameters(faust.channels.Channel.clone)


def test_stale_records_are_recognised_as_faust_streams_recognise_them() -> None:
    """`WorkerInput` drops what Faust's own streams skip: records of an earlier consumer generation, or delivered
    while the flow is stopped."""
    stream = _source(faust.streams.Stream._py_aiter)
    assert "not self.app.flow_control.is_active() or message.generation_id != self.app.consumer_generation_id" in (
        stream
    )
    assert "generation_id" in Message.__slots__
    assert _parameters(Message.ack)[:2] == ["self", "consumer"]


def test_topics_without_acks_get_no_offset_gaps() -> None:
    """`WorkerInput` subscribes without acks and commits itself: Faust's drain loop must then record no "gap" for
    its records (a gap is what let Faust's commit skip unprocessed records after a restart)."""
    drain = _source(faust.transport.consumer.Consumer._drain_messages)
    assert "acks_enabled = acks_enabled_for(message.topic) if acks_enabled: await self._add_gap(" in drain
    assert "return topic in self._acking_topics" in _source(faust.transport.conductor.Conductor.acks_enabled_for)


def test_seek_after_recovery_goes_through_seek_to_committed() -> None:
    """`FastDeliveryConsumer` learns where each input partition starts by wrapping `seek_to_committed`, which Faust's
    `perform_seek` calls after each rebalance's table recovery."""
    assert "_committed_offsets = await self.seek_to_committed()" in _source(
        faust.transport.consumer.Consumer.perform_seek
    )
    recovery = re.sub(r"\s+", " ", inspect.getsource(faust.tables.recovery))
    assert recovery.count("consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout") == 2
    assert inspect.iscoroutinefunction(faust.transport.consumer.Consumer.seek)
    assert _parameters(faust.transport.consumer.Consumer.seek) == ["self", "partition", "offset"]


def test_consumer_commits_offsets_it_is_given() -> None:
    """`WorkerInput.commit` hands its processed offsets to Faust's commit path (producer flush, commit, bookkeeping)."""
    commit = faust.transport.consumer.Consumer._commit_offsets
    assert inspect.iscoroutinefunction(commit)
    assert _parameters(commit) == ["self", "offsets", "start_new_transaction"]
    source = _source(commit)
    assert "await self.app.producer.flush()" in source
    assert "did_commit = await self._commit(committable_offsets)" in source


def test_the_aiokafka_consumer_runs_on_its_own_thread_reached_through_call_thread() -> None:
    """`FastDeliveryConsumer.seek_on_consumer_thread` runs aiokafka's `seek` through the consumer thread's
    `call_thread` (Faust's `seek` calls it from the caller's thread) and resets `_read_offset` as `Consumer.seek`
    does."""
    assert "self._thread.seek(partition, offset)" in _source(faust_aiokafka.Consumer._seek)
    assert "self._ensure_consumer().seek(partition, offset)" in _source(faust_aiokafka.AIOKafkaConsumerThread.seek)
    assert _parameters(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer) == ["self"]
    assert issubclass(faust_aiokafka.AIOKafkaConsumerThread, mode.threads.QueueServiceThread)
    assert inspect.iscoroutinefunction(mode.threads.QueueServiceThread.call_thread)
    # A plain (not async) function is accepted: the thread awaits `maybe_async(method(*args, **kwargs))`.
    assert "maybe_async(method(*args, **kwargs))" in _source(mode.threads.MethodQueue._process_enqueued)
    assert _parameters(mode.threads.QueueServiceThread.call_thread) == ["self", "fun", "args", "kwargs"]
    assert "self._read_offset[ensure_TP(partition)] = offset if offset else None" in _source(
        faust.transport.consumer.Consumer.seek
    )
