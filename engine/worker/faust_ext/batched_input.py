"""The worker's input: records from Faust's consumer in batches, without a Faust stream per record, and the
offsets the worker commits for them. Why no stream: a Faust agent hands each record through its stream machinery
(an event object, sensor calls, the current-event context variable, a take buffer, per-record acks), the largest
per-record cost left in the worker (bench/FINDINGS.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import faust
from faust.types import TP, Message

from engine.worker.input_positions import InputPositions, Key

log = logging.getLogger(__name__)


class MessageSchema(faust.Schema):
    """Hands the conductor the `Message` itself: the worker decodes values itself, so there is nothing to decode."""

    def compile(self, app: Any, **_: Any) -> Any:
        async def decode(message: Message, *, propagate: bool = False) -> Message:
            return message

        return decode


class WorkerInput:
    """Batches of raw Faust `Message`s from `topics`, each partition's records in offset order with none left
    out, and the input offsets the worker may commit.

    Faust still does group membership and partition assignment, fetching, pausing during rebalances and table
    recovery. It does NOT commit these topics (they are subscribed without acks): the worker commits them itself
    (`commit`), because Faust's bookkeeping of acknowledged offsets can move a partition's committed offset past
    records that were never processed. Measured under kill -9 on the dev broker: Faust resumes fetching before it
    seeks the partitions to their committed offsets, records fetched in between are dropped from the queue, and
    the fetch that continues after the seek is treated as a "gap" that Faust's commit then skips.

    Ordering and completeness: a partition's records are handed out strictly in offset order from the offset the
    consumer was sought to after the last assignment (`on_seek`), each once, by the rules of `InputPositions`; a
    partition whose input jumps past records it never handed out is sought back, and so is one that has records
    below its end offset yet hands out none of them for a second (`check_stalled`: the records that vanished were
    its last ones, so no later record shows a jump). Records delivered while the flow is stopped are left out
    too: the seek after the rebalance delivers them again.

    Back-pressure: the app's consumer puts the records on the channel's flow-controlled queue (`maxsize` records)
    a fetched partition at a time (`FastDeliveryConsumer.getmany`, registered through `app.bulk_channels`), where
    Faust's conductor would put a stream's events one by one; a queue under pressure pauses fetching of that
    partition. Faust clears the queue when partitions are revoked.

    Commit: `processed()` marks everything handed out so far as processed (the caller calls it once a batch's
    output has been flushed); `commit()` commits the next offset after the processed records of each partition.
    At-least-once: records processed but not yet committed are delivered again after a crash.
    """

    def __init__(self, app: faust.App, topics: Sequence[str], maxsize: int) -> None:
        self.app = app
        self.topics = frozenset(topics)
        topic = app.topic(*topics, schema=MessageSchema(), maxsize=maxsize, acks=False)
        # The iterating clone, as a stream would make: Faust delivers to a full queue through the topic's
        # subscribers, and only clones subscribe.
        self.channel = topic.clone(is_iterator=True)
        self.positions = InputPositions()
        self._seeks: set[asyncio.Task[None]] = set()

    def register(self) -> None:
        """Subscribe the input to its topics through Faust's conductor; call once, before the app starts."""
        self.app.topics.add(self.channel)
        self.app.seek_listeners.append(self.on_seek)
        for topic in self.topics:
            self.app.bulk_channels[topic] = self.channel

    async def on_seek(self, consumer: Any) -> None:
        """After an assignment's seek to the committed offsets: each assigned input partition starts there."""
        starts: dict[Key, int] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.topics:
                continue
            # What Faust just sought to. Not `_read_offset`: the drain loop moves that on with records fetched
            # before the seek, which may still be arriving.
            offset = consumer.sought_to.get(tp)
            if offset is None or offset < 0:
                offset = await consumer.position(tp)  # where the reset policy put it
            if offset is not None:
                starts[(tp.topic, tp.partition)] = int(offset)
        for key, offset in starts.items():
            self.positions.start(key, offset)
        log.info("input starts at %s", sorted(starts.items()))

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions revoked: their positions no longer count (the next assignment's seek sets them again)."""
        self.positions.forget((tp.topic, tp.partition) for tp in partitions)

    async def batches(self, size: int, within_s: float) -> AsyncIterator[list[Message]]:
        """Yield lists of at most `size` records, forever (see the class docstring for which records).

        Blocks until a first record is queued, takes what else is queued and, when that is less than `size`,
        sleeps `within_s` once and takes what came meanwhile; a batch with nothing to hand out yields nothing.
        Never raises for a record.
        """
        queue = self.channel.queue
        while True:
            batch = [await queue.get()]
            take_queued(queue, batch, size)
            if len(batch) < size and within_s > 0:
                # One nap for the rest of the window rather than a wake-up per record: under light load the
                # batch costs one timer, under heavy load the queue has filled the batch already.
                await asyncio.sleep(within_s)
                take_queued(queue, batch, size)
            current = self._admit(batch)
            if current:
                yield current

    def _admit(self, batch: list[Message]) -> list[Message]:
        if not self.app.flow_control.is_active():
            return []
        kept = self.positions.admit(batch, self.app.consumer_generation_id)
        self._seek_back()
        return kept

    def check_stalled(self) -> None:
        """Seek back each input partition that has records below its end offset (the highwater of the consumer's
        last fetch) but handed out none of them for `STALL_AFTER_S`: records that vanished before a seek and were
        the partition's last ones, so no later record shows the jump (`InputPositions.stalled`). Call it
        periodically (the worker's timer does); cheap, and a no-op while the flow is stopped."""
        if not self.app.flow_control.is_active() or not self.positions.next_offset:
            return
        if not self.channel.queue.empty():
            # Records are queued: partitions are waiting their turn or paused by back-pressure (a full queue
            # pauses fetching), not stalled. Seeking them now would only re-fetch what is coming anyway.
            self.positions.busy()
            return
        consumer = self.app.consumer
        ends: dict[Key, int] = {}
        for key in self.positions.next_offset:
            with contextlib.suppress(Exception):  # not assigned any more (a rebalance in progress): skip it
                end = consumer.highwater(TP(*key))
                if end is not None:
                    ends[key] = int(end)
        stalled = {(key, offset) for key, offset, _ in self.positions.stalled(ends)}
        self._seek_back(stalled)

    def _seek_back(self, stalled: Iterable[tuple[Key, int]] = ()) -> None:
        """Carry out the seeks `InputPositions` asked for. Faust's `seek` also resets its own read offset, below
        which its drain loop drops records: so the records from there on are delivered again."""
        stalled = set(stalled)
        for key, offset, seen in self.positions.seeks:
            topic, partition = key
            if (key, offset) in stalled:
                log.warning("input %s[%d] stopped at %d below its end offset %d: seeking back to %d", topic,
                            partition, offset, seen, offset)
            else:
                log.warning("input %s[%d] jumped from %d to %d: seeking back to %d", topic, partition, offset, seen,
                            offset)
            task = asyncio.ensure_future(self.app.consumer.seek_on_consumer_thread(TP(topic, partition), offset))
            self._seeks.add(task)
            task.add_done_callback(self._seeks.discard)
        self.positions.seeks.clear()

    def handed_out(self) -> dict[Key, int]:
        """Where each input partition stands after the batches handed out so far (see `processed`)."""
        return self.positions.handed_out()

    def processed(self, up_to: Mapping[Key, int]) -> None:
        """Everything handed out up to the `handed_out()` snapshot `up_to` is processed and its output flushed: it
        may be committed."""
        self.positions.processed(up_to)

    def processed_up_to(self, topic: str, partition: int) -> int | None:
        """Next offset after the processed records of one partition (None: start not known yet)."""
        return self.positions.processed_up_to((topic, partition))

    async def commit(self) -> None:
        """Commit the processed offsets that moved since the last commit. Blocks for the commit round trip."""
        positions = self.positions.to_commit()
        if not positions:
            return
        await self.app.consumer._commit_offsets({TP(*key): offset for key, offset in positions.items()})
        self.positions.committed(positions)


def take_queued(queue: Any, batch: list[Message], size: int) -> None:
    """Move up to `size - len(batch)` records from `queue` (mode's `FlowControlQueue`) to `batch` at once: what
    mode's `get_nowait` does per record (asyncio's: take the item, wake one waiting putter; mode's: give held-back
    partitions back once the queue is below its pressure-drop size), done once for all of them."""
    taken = min(size - len(batch), queue.qsize())
    if taken <= 0:
        return
    popleft = queue._queue.popleft
    batch.extend([popleft() for _ in range(taken)])
    putters = queue._putters
    for _ in range(taken):
        if not putters:
            break
        queue._wakeup_next(putters)
    pending = queue._pending_pressure_drop_callbacks
    while pending and queue.qsize() <= queue.pressure_drop_size:
        queue.maybe_endorse_pressure_drop()
