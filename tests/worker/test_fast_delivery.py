"""`FastDeliveryConsumer.wait_first` keeps the semantics of mode's `Service.wait_first` as the drain loop uses it;
its `_wait_next_records` fetches again as soon as a full queue gives a partition back."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition as AioTP
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from mode import Service
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from engine.worker.faust_ext.fast_delivery import (
    ALL_HELD_BACK_WAIT_S,
    HELD_BACK_FETCH_WAIT_S,
    NudgeFaustApp,
    fast_delivery_consumer,
)


class _ConsumerLike(Service):
    """The parts of Faust's consumer `wait_first` relies on: a mode service with a `suspend_flow` event."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


Consumer = fast_delivery_consumer(_ConsumerLike)


async def test_a_callback_that_does_not_suspend_completes_in_place_without_tasks() -> None:
    consumer = Consumer()
    tasks_before = len(asyncio.all_tasks())
    delivered: list[int] = []

    async def callback() -> int:
        delivered.append(1)
        return 7

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unawaited suspension coroutine would warn
        result = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        gc.collect()
    assert delivered == [1]
    assert result.results == [7] and not result.stopped
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_callback_that_suspends_runs_to_its_end() -> None:
    consumer = Consumer()
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def callback() -> str:
        steps.append("start")
        await asyncio.sleep(0)
        value = await gate
        steps.append(value)
        return value

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert steps == ["start"] and not waiting.done()
    gate.set_result("done")
    result = await asyncio.wait_for(waiting, 1)
    assert steps == ["start", "done"]
    assert "done" in result.results


async def test_a_suspended_callback_is_abandoned_when_the_flow_is_suspended() -> None:
    consumer = Consumer()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def callback() -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0)
    assert seen == ["cancelled"]


async def test_an_exception_from_the_callback_propagates() -> None:
    consumer = Consumer()

    async def callback() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())


async def test_while_the_flow_is_suspended_the_plain_path_is_taken() -> None:
    consumer = Consumer()
    consumer.suspend_flow.set()

    async def callback() -> int:
        await asyncio.sleep(1)
        return 1

    result = await asyncio.wait_for(consumer.wait_first(callback(), consumer.suspend_flow.wait()), 1)
    assert result.results == [True]  # the suspension won; the callback was cancelled, as in Faust


def test_the_app_uses_the_fast_consumer() -> None:
    app = NudgeFaustApp("fast-delivery-test", broker="kafka://localhost:1")
    assert app.transport.Consumer.__name__.startswith("FastDelivery")


# --- fetching while a full queue holds partitions back ------------------------------------------------------------

CLICKS = [TP("clicks", n) for n in range(2)]
IDLE = TP("handovers", 0)  # an internal input that has no records


class _FetcherLike(Service):
    """Faust's own `_wait_next_records`, `on_buffer_full`, `on_buffer_drop` and `_get_active_partitions` on the
    state they use; `_getmany` (the fetch on the consumer's thread) records the wait it was given and, as for
    partitions without records, returns nothing after that wait."""

    _wait_next_records = FaustConsumer._wait_next_records
    on_buffer_full = FaustConsumer.on_buffer_full
    on_buffer_drop = FaustConsumer.on_buffer_drop
    _get_active_partitions = FaustConsumer._get_active_partitions

    def __init__(self, partitions: list[TP]) -> None:
        super().__init__()
        self.app = SimpleNamespace(client_only=False, in_recovery=False)
        self.flow_active = True
        self._active_partitions = set(partitions)
        self._buffered_partitions: set[TP] = set()
        self.not_waiting_next_records = asyncio.Event()
        self.fetch_waits: list[float] = []

    async def _getmany(self, active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        self.fetch_waits.append(timeout)
        await asyncio.sleep(timeout)
        return {}


Fetcher = fast_delivery_consumer(_FetcherLike)


async def test_faust_alone_waits_its_whole_fetch_timeout_on_the_partitions_still_active() -> None:
    """What the override is for: Faust with the clickstream held back waits out 1 s on an idle topic."""
    fetcher = _FetcherLike([*CLICKS, IDLE])
    for tp in CLICKS:
        fetcher.on_buffer_full(tp)
    await fetcher._wait_next_records(0.2)
    assert fetcher.fetch_waits == [0.2]


async def test_while_partitions_are_held_back_a_fetch_waits_briefly() -> None:
    fetcher = Fetcher([*CLICKS, IDLE])
    fetcher.on_buffer_full(CLICKS[0])
    records, active = await fetcher._wait_next_records(1.0)
    assert records == {} and active == {CLICKS[1], IDLE}
    assert fetcher.fetch_waits == [HELD_BACK_FETCH_WAIT_S]
    fetcher.on_buffer_drop(CLICKS[0])
    await fetcher._wait_next_records(0.05)
    assert fetcher.fetch_waits[-1] == 0.05  # nothing held back: Faust's own wait


async def test_with_every_partition_held_back_the_wait_ends_when_one_is_given_back() -> None:
    fetcher = Fetcher(CLICKS)
    for tp in CLICKS:
        fetcher.on_buffer_full(tp)
    started = time.monotonic()
    waiting = asyncio.ensure_future(fetcher._wait_next_records(1.0))
    await asyncio.sleep(0.05)
    assert not waiting.done() and fetcher.fetch_waits == []
    fetcher.on_buffer_drop(CLICKS[1])
    records, active = await asyncio.wait_for(waiting, 1)
    assert time.monotonic() - started < 0.5  # Faust would have slept 1 s
    assert records == {} and active == {CLICKS[1]}
    assert fetcher.fetch_waits == [HELD_BACK_FETCH_WAIT_S]  # CLICKS[0] is still held back


async def test_with_every_partition_held_back_and_none_given_back_it_returns_nothing_after_faust_s_pause() -> None:
    fetcher = Fetcher(CLICKS)
    for tp in CLICKS:
        fetcher.on_buffer_full(tp)
    started = time.monotonic()
    records, active = await fetcher._wait_next_records(1.0)
    assert records == {} and active == set()
    assert ALL_HELD_BACK_WAIT_S - 0.05 <= time.monotonic() - started < ALL_HELD_BACK_WAIT_S + 0.5
    assert fetcher.fetch_waits == []


# --- bulk delivery to the worker's input channel ------------------------------------------------------------------


class _BulkLike(Service):
    """What `FastDeliveryConsumer.getmany` and `_deliver_bulk` use, with Faust's own `on_buffer_full`,
    `on_buffer_drop` and `_get_active_partitions`: `_wait_next_records` hands out the `fetches` given (keyed by
    aiokafka's TopicPartition, as the fetcher keys them), `_to_message` makes a plain record of the offset."""

    on_buffer_full = FaustConsumer.on_buffer_full
    on_buffer_drop = FaustConsumer.on_buffer_drop
    _get_active_partitions = FaustConsumer._get_active_partitions

    def __init__(self, channel: Any, fetches: list[dict[Any, list[int]]], partitions: list[TP]) -> None:
        super().__init__()

        async def ebb() -> None:
            return None

        self.flow = FlowControlEvent(initially_suspended=False)
        self.app = SimpleNamespace(
            client_only=False,
            in_recovery=False,
            bulk_channels={"clicks": channel},
            consumer_generation_id=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None),
            flow_control=self.flow,
            producer=SimpleNamespace(buffer=SimpleNamespace(wait_until_ebb=ebb)),
            sensors=SimpleNamespace(on_topic_buffer_full=lambda tp: None),
        )
        self.flow_active = True
        self.suspend_flow = asyncio.Event()
        self._active_partitions = set(partitions)
        self._buffered_partitions: set[TP] = set()
        self._read_offset: dict[TP, int | None] = {tp: None for tp in partitions}
        self._fetches = fetches
        self.seeks = 0

    async def _wait_next_records(self, timeout: float) -> tuple[dict[Any, list[Any]], set[TP]]:
        fetched = self._fetches.pop(0)
        records = {tp: [SimpleNamespace(offset=offset) for offset in offsets] for tp, offsets in fetched.items()}
        return records, self._get_active_partitions()

    def _to_message(self, tp: Any, record: Any) -> Any:
        return SimpleNamespace(tp=tp, offset=record.offset)

    def highwater(self, tp: TP) -> int:
        return 0

    async def perform_seek(self) -> None:
        self.seeks += 1


BulkConsumer = fast_delivery_consumer(_BulkLike)


def _channel(maxsize: int) -> Any:
    queue: FlowControlQueue[Any] = FlowControlQueue(maxsize, flow_control=FlowControlEvent(initially_suspended=False))
    return SimpleNamespace(queue=queue, put=queue.put)


def _queued(channel: Any) -> list[tuple[TP, int]]:
    return [(m.tp, m.offset) for m in list(channel.queue._queue)]


async def _round(consumer: Any) -> list[tuple[Any, int]]:
    return [(tp, message.offset) async for tp, message in consumer.getmany(timeout=1.0)]


async def test_records_of_a_bulk_topic_go_onto_its_queue_and_others_are_yielded_as_faust_does() -> None:
    clicks, other = TP("clicks", 0), TP("changelog", 0)
    channel = _channel(100)
    consumer = BulkConsumer(channel, [{AioTP("clicks", 0): [5, 6, 7], AioTP("changelog", 0): [1, 2]}], [clicks, other])
    consumer._read_offset[clicks] = 6  # records fetched before a seek to 6 are dropped, as Faust drops them
    assert await _round(consumer) == [(other, 1), (other, 2)]
    assert _queued(channel) == [(clicks, 6), (clicks, 7)]
    assert all(type(tp) is TP for tp, _ in _queued(channel))  # Faust's TP, not the fetcher's key
    assert consumer._read_offset[clicks] == 7


async def test_a_queue_under_pressure_holds_its_partition_back_until_it_drains() -> None:
    clicks = TP("clicks", 0)
    channel = _channel(10)  # pressure from 8 queued records (mode: maxsize / 1.25)
    consumer = BulkConsumer(channel, [{AioTP("clicks", 0): list(range(9))}], [clicks])
    await _round(consumer)
    assert clicks in consumer._buffered_partitions and clicks not in consumer._get_active_partitions()
    while not channel.queue.empty():
        channel.queue.get_nowait()
    channel.queue.maybe_endorse_pressure_drop()
    assert clicks not in consumer._buffered_partitions and clicks in consumer._get_active_partitions()


async def test_a_full_queue_makes_delivery_wait_and_a_suspended_flow_abandons_the_rest() -> None:
    clicks = TP("clicks", 0)
    channel = _channel(2)
    consumer = BulkConsumer(channel, [{AioTP("clicks", 0): [0, 1, 2, 3]}], [clicks])
    delivering = asyncio.ensure_future(_round(consumer))
    await asyncio.sleep(0.05)
    assert not delivering.done() and _queued(channel) == [(clicks, 0), (clicks, 1)]
    assert consumer._read_offset[clicks] == 1  # what was put, before waiting for room
    consumer.suspend_flow.set()  # a rebalance starts: the seek after it fetches 2 and 3 again
    assert await asyncio.wait_for(delivering, 1) == []
    assert _queued(channel) == [(clicks, 0), (clicks, 1)] and consumer._read_offset[clicks] == 1


async def test_a_full_queue_that_drains_takes_the_rest_in_order() -> None:
    clicks = TP("clicks", 0)
    channel = _channel(2)
    consumer = BulkConsumer(channel, [{AioTP("clicks", 0): [0, 1, 2, 3]}], [clicks])
    delivering = asyncio.ensure_future(_round(consumer))
    taken = []
    while len(taken) < 4:
        taken.append((await asyncio.wait_for(channel.queue.get(), 1)).offset)
    await asyncio.wait_for(delivering, 1)
    assert taken == [0, 1, 2, 3] and consumer._read_offset[clicks] == 3


async def test_records_fetched_while_the_flow_is_stopped_are_not_delivered_and_the_consumer_seeks_back() -> None:
    clicks = TP("clicks", 0)
    channel = _channel(10)
    consumer = BulkConsumer(channel, [{AioTP("clicks", 0): [0, 1]}], [clicks])
    consumer.flow_active = False
    assert await _round(consumer) == []
    assert channel.queue.empty() and consumer.seeks == 1


async def test_a_new_generation_stops_the_round() -> None:
    clicks, other = TP("clicks", 0), TP("clicks", 1)
    channel = _channel(10)
    consumer = BulkConsumer(channel, [{AioTP("clicks", 0): [0], AioTP("clicks", 1): [0]}], [clicks, other])
    original = consumer._deliver_bulk

    async def deliver_then_rebalance(tp: TP, chan: Any, records: list[Any]) -> None:
        await original(tp, chan, records)
        consumer.app.consumer_generation_id += 1

    consumer._deliver_bulk = deliver_then_rebalance
    await _round(consumer)
    assert _queued(channel) == [(clicks, 0)]
