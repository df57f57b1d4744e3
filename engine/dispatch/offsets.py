"""Which Kafka offsets are safe to commit while actions finish out of order."""

from __future__ import annotations

from aiokafka import TopicPartition


class OffsetTracker:
    """Per-partition in-flight offsets and the safe commit point. In memory, one event loop.

    A slow action holds back the commit of later ones (they are redelivered after a crash and recognised by
    their idempotency claims), but an unfinished action is never skipped.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        """A record was handed out for handling."""
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """The record's outcome is final or durably scheduled; unknown offsets are ignored."""
        pending = self._pending.get(tp)
        if pending is not None:
            pending.discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """For each partition whose commit point moved since the last `committed()`: the next offset to commit,
        i.e. the lowest offset still in flight, or one past the highest offset seen when none is."""
        out: dict[TopicPartition, int] = {}
        for tp, upper in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else upper
            if self._committed.get(tp) != point:
                out[tp] = point
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """The broker accepted these commits."""
        self._committed.update(offsets)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._committed)

    def forget(self, partitions: set[TopicPartition] | list[TopicPartition]) -> None:
        """Partitions revoked: their in-flight records will be redelivered to the new owner."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
