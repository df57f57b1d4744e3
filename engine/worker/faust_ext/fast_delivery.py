"""Hand fetched records to the worker without Faust's per-record delivery, keeping its semantics: `wait_first` wraps
its coroutines and the service's stopped/crashed events in four tasks and cancels three, for every message, about
a third of the worker's CPU per event in the benchmark; and after that fix, the drain loop's per-record path (an
async generator step, checks, a conductor callback with a lock and two awaits, per record) still cost ~13 % of it
(bench/FINDINGS.md): the worker's input topics now go onto their queue a fetched partition at a time."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any

import faust
from faust import transport
from faust.transport.consumer import ensure_TP
from faust.types import TransportT
from mode.services import WaitResults

from engine.worker.faust_ext.changelog_read_ahead import ReadAheadTableManager

# Faust's pause when a full input queue holds back every partition (`Consumer._wait_next_records` sleeps 1 s): the
# longest `FastDeliveryConsumer._wait_next_records` waits for a partition to be given back.
ALL_HELD_BACK_WAIT_S = 1.0
# The longest a fetch waits for records while a full queue holds some partitions back: how late a partition given
# back is fetched again at worst (a fetch call every 20 ms, only while partitions are held back).
HELD_BACK_FETCH_WAIT_S = 0.02


@types.coroutine
def _continue(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Drive `coro`, already stepped once and suspended on `waiting_on`, to its end: `yield from` by hand (a
    started coroutine cannot be handed to a new task directly)."""
    try:
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation included: it must reach the callback as before
                waiting_on = coro.throw(exc)
            else:
                waiting_on = coro.send(sent)
    except StopIteration as stop:
        return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    return await _continue(coro, waiting_on)


def _close(awaitable: Any) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


def fast_delivery_consumer(base: type) -> type:
    """A subclass of Faust's consumer class `base` with the delivery and fetch paths below (`getmany`,
    `wait_first`, `_wait_next_records`)."""

    class FastDeliveryConsumer(base):  # type: ignore[misc, valid-type]
        """Faust's consumer, putting the records of the topics in `app.bulk_channels` on their channel's queue a
        fetched partition at a time (`getmany`), delivering every other message without a task per message
        (`wait_first`), and fetching again as soon as a full input queue gives a partition back
        (`_wait_next_records`); nothing else differs.

        Faust's drain loop (`Consumer._drain_messages`, its only caller of `wait_first`) delivers every message
        with `await self.wait_first(callback(message), self.suspend_flow.wait())`: the callback (the conductor
        putting the record on its channel's queue) races the flow being suspended by a rebalance, so a callback
        blocked on a full queue is abandoned when the flow stops. Ordering, back-pressure and what is abandoned
        on a rebalance stay exactly Faust's.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._partition_given_back = asyncio.Event()  # set by `on_buffer_drop`, awaited in `_wait_next_records`
            self._bulk_pressure: dict[Any, tuple[Callable[[], None], Callable[[], None]]] = {}

        async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
            """Same results and exceptions as `mode.Service.wait_first`.

            Fast path, taken only for the drain loop's call shape (two coroutines, no timeout) while the flow is
            not suspended and the consumer neither stopped nor crashed: the callback is stepped once in place.
            Almost always it completes without suspending (the queue had room): the result is what `wait_first`
            reports for a callback that finished first, and the unused `suspend_flow.wait()` coroutine is closed
            without running. When the callback does suspend (full queue, flow control, producer back-pressure),
            the rest of it runs under Faust's own `wait_first` against the same suspension coroutine: abandoned
            on suspension exactly as before. Exceptions from the callback propagate as they did. Any other call
            goes to Faust's `wait_first` unchanged.
            """
            callback = coros[0] if len(coros) == 2 else None
            if (
                timeout is None
                and asyncio.iscoroutine(callback)
                and not self.suspend_flow.is_set()
                and not self._stopped.is_set()
                and not self._crashed.is_set()
            ):
                try:
                    waiting_on = callback.send(None)
                except StopIteration as stop:
                    _close(coros[1])
                    return WaitResults([callback], [stop.value], False)
                except BaseException:
                    _close(coros[1])
                    raise
                return await super().wait_first(_finish(callback, waiting_on), coros[1])
            return await super().wait_first(*coros, timeout=timeout)

        async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
            """Faust's wait for the next fetched records, except while a full input queue holds partitions back
            (`on_buffer_full` takes them out of the active set until the queue drains, `on_buffer_drop`). Faust
            then waits for records of the partitions still active, up to its whole fetch timeout (1 s), or, when
            none is active, sleeps 1 s; a partition given back meanwhile waits for that to end, although the
            worker drains the queue in a fraction of it. Measured in the benchmark's latency step: with every
            clickstream partition held back, the fetch waited the full second on the idle internal topics, the
            queue ran dry and the worker sat idle ~0.8 s at a time while records waited in the broker, so
            event -> action p99 grew to 4-7 s at 80 % of the worker's rate (bench/FINDINGS.md). Here, while any
            partition is held back, a fetch waits at most `HELD_BACK_FETCH_WAIT_S`, and with none active the
            wait ends as soon as one is given back (after the same second at most; then no records are returned
            and Faust's drain loop calls again)."""
            if self.flow_active and not self.app.client_only:
                if not self._get_active_partitions():
                    self._partition_given_back.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._partition_given_back.wait(), ALL_HELD_BACK_WAIT_S)
                    if not self._get_active_partitions():
                        return {}, set()
                if self._buffered_partitions:
                    timeout = min(timeout, HELD_BACK_FETCH_WAIT_S)
            return await super()._wait_next_records(timeout)

        async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
            """Faust's `getmany` (the drain loop's source of `(tp, message)` pairs), except that the records of a
            topic in the app's `bulk_channels` are not yielded one by one: they go straight onto that channel's
            queue (`_deliver_bulk`), a fetched partition's records at a time. Records of any other topic are
            yielded as Faust does. The checks are Faust's, made per partition instead of per record: the flow is
            active, the generation has not changed, the partition is active or held back by a full queue."""
            records, active_partitions = await self._wait_next_records(timeout)
            generation_id = self.app.consumer_generation_id
            if records is None or self.should_stop:
                return
            if not self.flow_active:
                # Faust: records fetched while the flow is stopped are not delivered; seek back to the committed
                # offsets so that they are fetched again.
                try:
                    await self.perform_seek()
                except Exception as exc:  # as Faust: logged, the next round tries again
                    self.log.warning(f"exception performing seek when flow not active {exc}")
                return
            bulk = self.app.bulk_channels
            to_message = self._to_message
            for tp, tp_records in records.items():
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    break
                if not (
                    active_partitions is None or tp in active_partitions or tp in self._buffered_partitions
                ):
                    continue
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                channel = bulk.get(tp.topic)
                if channel is not None:
                    # The fetcher's keys are aiokafka's TopicPartition; Faust's bookkeeping asserts its own TP.
                    await self._deliver_bulk(ensure_TP(tp), channel, tp_records)
                    continue
                for record in tp_records:
                    if not self.flow_active or self.app.consumer_generation_id != generation_id:
                        return
                    yield tp, to_message(tp, record)

        async def _deliver_bulk(self, tp: Any, channel: Any, records: list[Any]) -> None:
            """Put one partition's fetched records on `channel`'s queue as Faust's conductor puts each record
            (`ConductorCompiler.build`), with its per-record awaits made once: flow control, the producer's
            buffer, the queue's pressure callbacks (a partition whose queue is under pressure is held back from
            fetching until it drains), and Faust's read offset moved past each record put. A record meeting a
            full queue waits for room, and is abandoned with the rest when the flow is suspended meanwhile (a
            rebalance: the seek after it fetches them again), as in Faust's drain loop. Records below Faust's
            read offset (fetched before a seek) are dropped, as Faust drops them."""
            read_offset = self._read_offset
            start = read_offset.get(tp)
            if start is not None:
                records = [record for record in records if record.offset >= start]
            if not records:
                return
            app = self.app
            await app.flow_control.acquire()
            await app.producer.buffer.wait_until_ebb()
            on_high, on_drop = self._pressure_callbacks(tp)
            queue = channel.queue
            to_message = self._to_message
            put_nowait = queue.put_nowait_enhanced
            delivered: int | None = None
            for record in records:
                message = to_message(tp, record)
                if queue.full():
                    app.sensors.on_topic_buffer_full(tp)
                    if delivered is not None:
                        read_offset[tp] = delivered
                    results = await self.wait_first(channel.put(message), self.suspend_flow.wait())
                    if results.stopped or self.suspend_flow.is_set():
                        return  # abandoned with the rest: the seek after the rebalance fetches them again
                else:
                    put_nowait(message, on_pressure_high=on_high, on_pressure_drop=on_drop)
                delivered = record.offset
            if delivered is not None:
                read_offset[tp] = delivered

        def _pressure_callbacks(self, tp: Any) -> tuple[Callable[[], None], Callable[[], None]]:
            """One pair per partition, as the conductor compiles them: the queue keeps its pending pressure-drop
            callbacks in a set, so the same callable must come back every time."""
            callbacks = self._bulk_pressure.get(tp)
            if callbacks is None:
                on_topic_buffer_full = self.app.sensors.on_topic_buffer_full

                def on_high() -> None:
                    on_topic_buffer_full(tp)
                    self.on_buffer_full(tp)

                def on_drop() -> None:
                    self.on_buffer_drop(tp)

                callbacks = self._bulk_pressure[tp] = (on_high, on_drop)
            return callbacks

        def on_buffer_drop(self, tp: Any) -> None:
            """Faust's: a partition held back by a full queue is active again; also wakes `_wait_next_records`."""
            super().on_buffer_drop(tp)
            self._partition_given_back.set()

        async def seek_to_committed(self) -> Any:
            """Faust's seek to the committed offsets; remembers what they were (`sought_to`: None for a partition
            never committed) so the worker knows where each partition's input starts."""
            offsets = await super().seek_to_committed()
            self.sought_to = dict(offsets)
            return offsets

        async def seek_on_consumer_thread(self, partition: Any, offset: int) -> None:
            """Faust's `seek` (the aiokafka consumer seeks, and Faust's read offset below which its drain loop
            drops records is reset), with the aiokafka seek run on the consumer's own thread, between two fetches.
            Faust's `seek` calls it from the caller's thread, racing the fetcher there: aiokafka's
            `fetched_records` then failed with a KeyError and the worker crashed (seen with 2 and 4 workers)."""
            thread = self._thread
            consumer = thread._ensure_consumer()
            await thread.call_thread(consumer.seek, partition, offset)
            self._read_offset[ensure_TP(partition)] = offset if offset else None  # as `Consumer.seek` does

        async def perform_seek(self) -> None:
            """Faust's seek of every assigned partition to its committed offset (after each rebalance's table
            recovery), then each of the app's `seek_listeners` is awaited with this consumer: from here on the
            consumer fetches the input from those offsets. Records fetched before the seek may still arrive."""
            await super().perform_seek()
            for listener in self.app.seek_listeners:
                await listener(self)

    # Not renamed: mode registers a service's tasks under its qualified name at class creation.
    return FastDeliveryConsumer


def fast_delivery_transport(base: type[TransportT]) -> type[TransportT]:
    """Faust's transport class `base`, with `FastDeliveryConsumer` as its consumer class."""
    consumer = fast_delivery_consumer(base.Consumer)  # type: ignore[attr-defined]
    return type(f"FastDelivery{base.__name__}", (base,), {"Consumer": consumer})


class NudgeFaustApp(faust.App):
    """`faust.App` whose consumer delivers messages through `FastDeliveryConsumer` and whose tables recover
    through `changelog_read_ahead.ReadAheadTableManager` (unless the `TableManager` setting names another);
    nothing else differs. (The benchmark's naive baseline deliberately uses plain `faust.App`.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("TableManager", ReadAheadTableManager)
        super().__init__(*args, **kwargs)
        # Awaited with the consumer after every seek to the committed offsets (`FastDeliveryConsumer.perform_seek`).
        self.seek_listeners: list[Callable[[Any], Awaitable[None]]] = []
        # Topic name -> the one channel subscribed to it, delivered in bulk (`FastDeliveryConsumer.getmany`).
        self.bulk_channels: dict[str, Any] = {}

    def _new_transport(self) -> TransportT:
        base = transport.by_url(self.conf.broker_consumer[0])
        return fast_delivery_transport(base)(self.conf.broker_consumer, self)  # type: ignore[call-arg]

