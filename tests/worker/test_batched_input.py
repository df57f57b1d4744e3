"""`take_queued` (what `WorkerInput` batches with) takes queued records in bulk and does what mode's `get_nowait`
does per record: wakes waiting putters and gives held-back partitions back below the pressure-drop size."""

from __future__ import annotations

import asyncio
from typing import Any

from mode.utils.queues import FlowControlEvent, FlowControlQueue

from engine.worker.faust_ext.batched_input import take_queued


def _queue(maxsize: int) -> FlowControlQueue[Any]:
    return FlowControlQueue(maxsize, flow_control=FlowControlEvent(initially_suspended=False))


async def test_records_are_taken_in_order_up_to_the_batch_size() -> None:
    queue = _queue(100)
    for n in range(10):
        queue.put_nowait(n)
    batch: list[Any] = ["first"]
    take_queued(queue, batch, 5)
    assert batch == ["first", 0, 1, 2, 3]
    take_queued(queue, batch, 100)
    assert batch == ["first", *range(10)] and queue.empty()
    take_queued(queue, batch, 100)  # nothing queued: nothing taken
    assert len(batch) == 11


async def test_putters_waiting_on_a_full_queue_are_woken() -> None:
    queue = _queue(2)
    queue.put_nowait(0)
    queue.put_nowait(1)
    putters = [asyncio.ensure_future(queue.put(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    assert not any(p.done() for p in putters)
    batch: list[Any] = []
    take_queued(queue, batch, 10)
    assert batch == [0, 1]
    await asyncio.wait_for(asyncio.gather(*putters), 1)
    take_queued(queue, batch, 10)
    assert batch == [0, 1, 2, 3]


async def test_held_back_partitions_are_given_back_below_the_pressure_drop_size() -> None:
    queue = _queue(10)  # pressure from 8 queued (10 / 1.25), given back at 4 or fewer (10 * 0.4)
    given_back: list[str] = []
    held: list[str] = []
    for n in range(9):
        queue.put_nowait_enhanced(
            n, on_pressure_high=lambda: held.append("p0"), on_pressure_drop=lambda: given_back.append("p0")
        )
    assert held == ["p0"] and not given_back
    batch: list[Any] = []
    take_queued(queue, batch, 3)  # 6 left: still above the drop size
    assert not given_back
    take_queued(queue, batch, 5)  # 4 left
    assert given_back == ["p0"]
