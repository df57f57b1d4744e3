"""`FastDeliveryConsumer.wait_first` keeps the semantics of mode's `Service.wait_first` as the drain loop uses it."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from mode import Service

from engine.worker.faust_ext.fast_delivery import NudgeFaustApp, fast_delivery_consumer


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
