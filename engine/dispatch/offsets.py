"""Which Kafka offsets are safe to commit while actions finish out of order.

Contract: per partition, `start(tp, offset)` when a record is handed out and `done(tp, offset)` when its
outcome is final or durably scheduled. `committable()` returns, for each partition that moved since the last
call, the next offset to commit: the lowest offset still in flight, or one past the highest offset seen when
none is. So a slow action holds back the commit of later ones (they are redelivered after a crash and
recognised by their idempotency claims) but never lets an unfinished action be skipped.
"""

from __future__ import annotations

from aiokafka import TopicPartition


class OffsetTracker:
    """Per-partition in-flight offsets and the safe commit point (module docstring)."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        pending = self._pending.get(tp)
        if pending is not None:
            pending.discard(offset)

    def in_flight(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def committable(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for tp, upper in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else upper
            if self._committed.get(tp) != point:
                out[tp] = point
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._committed)

    def forget(self, partitions: set[TopicPartition] | list[TopicPartition]) -> None:
        """Partitions revoked: their in-flight records will be redelivered to the new owner."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
