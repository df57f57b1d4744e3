"""The worker's input: records from Faust's consumer in batches, without a Faust stream per record. Why: a Faust
agent hands each record through its stream machinery (an event object, sensor calls, the current-event context
variable, a take buffer, per-record acks), the largest per-record cost left in the worker (bench/FINDINGS.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.types import Message


class MessageSchema(faust.Schema):
    """Hands the conductor the `Message` itself: the worker decodes values itself, so there is nothing to decode."""

    def compile(self, app: Any, **_: Any) -> Any:
        async def decode(message: Message, *, propagate: bool = False) -> Message:
            return message

        return decode


class WorkerInput:
    """Batches of raw Faust `Message`s from `topics`, in arrival order, with Faust's own flow control.

    Faust still does everything else: group membership and partition assignment, fetching, pausing during
    rebalances, offset commits and table recovery. The records are not decoded: the worker decodes values itself.

    Back-pressure: the conductor puts each record on the channel's flow-controlled queue (`maxsize` records),
    exactly where it would put a stream's events; a full queue pauses fetching of that partition. Faust clears
    the queue when partitions are revoked.

    Commit: a record's offset may be committed by Faust only once it is acknowledged (`ack`), which the caller
    does after it processed the batch and flushed what the batch produced: at-least-once.
    """

    def __init__(self, app: faust.App, topics: Sequence[str], maxsize: int) -> None:
        self.app = app
        topic = app.topic(*topics, schema=MessageSchema(), maxsize=maxsize, acks=True)
        # The iterating clone, as a stream would make: Faust delivers to a full queue through the topic's
        # subscribers, and only clones subscribe.
        self.channel = topic.clone(is_iterator=True)

    def register(self) -> None:
        """Subscribe the input to its topics through Faust's conductor; call once, before the app starts."""
        self.app.topics.add(self.channel)

    async def batches(self, size: int, within_s: float) -> AsyncIterator[list[Message]]:
        """Yield lists of at most `size` records, in arrival order, forever.

        Blocks until a first record is queued, takes what else is queued and, when that is less than `size`,
        sleeps `within_s` once and takes what came meanwhile. Records of an earlier consumer generation (fetched
        before a rebalance) or delivered while the flow is stopped are left out and acknowledged at once, as
        Faust's streams do; an empty remainder yields nothing. Never raises for a record.
        """
        queue = self.channel.queue
        while True:
            batch = [await queue.get()]
            self._drain(queue, batch, size)
            if len(batch) < size and within_s > 0:
                # One nap for the rest of the window rather than a wake-up per record: under light load the
                # batch costs one timer, under heavy load the queue has filled the batch already.
                await asyncio.sleep(within_s)
                self._drain(queue, batch, size)
            current = self._current(batch)
            if current:
                yield current

    @staticmethod
    def _drain(queue: Any, batch: list[Message], size: int) -> None:
        while len(batch) < size and not queue.empty():
            batch.append(queue.get_nowait())

    def _current(self, batch: list[Message]) -> list[Message]:
        """Drop (and acknowledge) records of an earlier generation or delivered while the flow is stopped."""
        generation = self.app.consumer_generation_id
        active = self.app.flow_control.is_active()
        if active and all(m.generation_id == generation for m in batch):
            return batch
        current = [m for m in batch if active and m.generation_id == generation]
        self.ack([m for m in batch if not (active and m.generation_id == generation)])
        return current

    def ack(self, batch: Sequence[Message]) -> None:
        """Acknowledge processed records: from now on Faust may commit their offsets. Does not block."""
        consumer = self.app.consumer
        for message in batch:
            message.ack(consumer)
