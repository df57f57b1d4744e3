"""The worker's event-time clock and its index of pending per-lead deadlines. Pure: no Faust, no I/O.

Event-time clock (`EventClock`)
    The clock answers "up to which event time may deadlines fire now?". It is the largest event timestamp the
    worker has seen, plus the wall-clock time elapsed since that maximum last moved (processing-time
    fallback, so a quiet stream still lets deadlines pass), minus the allowed lateness:

        watermark = max_event_ts + (wall_now - wall_when_max_moved) - allowed_lateness

    With live traffic (event time ~ wall time) a deadline therefore fires about `allowed_lateness` after it
    falls due: that is the price of letting an event that arrives up to `allowed_lateness` late (say the
    purchase that cancels an abandonment) still count. Before any event is seen the clock runs on wall time
    minus the lateness, so a restarted worker with recovered deadlines and no new traffic still fires them.
    The watermark never moves backwards. An event stamped further than `max_future_skew_ms` ahead of the wall
    clock (a device with a wrong clock) moves the clock only up to that bound, so it cannot fire every pending
    deadline early. One clock per worker process (not per partition): simple, and correct as long as
    partitions carry similar event times, which holds for one live clickstream.

Deadline index (`DeadlineIndex`)
    A heap of each lead's earliest pending deadline, with the partition that holds the lead's state. The core
    returns a lead's full list of pending deadlines after every step, so `set()` replaces the lead's entry (no
    reconciling). `pop_due(now)` removes and returns every lead whose earliest deadline is due: the caller
    then asks the agent to evaluate a `Tick` for it and the agent `set()`s the lead's remaining deadlines
    again. A lead is therefore never handed out twice for the same deadline while its tick is in flight.
    Superseded heap entries are dropped lazily when they reach the top.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

DEFAULT_MAX_FUTURE_SKEW_MS = 60_000


def wall_ms() -> int:
    return int(time.time() * 1000)


class EventClock:
    """Watermark = max event time seen + idle wall time since it moved - allowed lateness; monotonic."""

    def __init__(
        self,
        allowed_lateness_ms: int,
        max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
        wall: Callable[[], int] = wall_ms,
    ) -> None:
        if allowed_lateness_ms < 0:
            raise ValueError("allowed lateness must be >= 0 ms")
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_future_skew_ms = max_future_skew_ms
        self._wall = wall
        self._max_event_ms: int | None = None
        self._wall_at_max_ms = 0
        self._last_watermark_ms: int | None = None

    @property
    def max_event_ms(self) -> int | None:
        return self._max_event_ms

    def observe(self, event_ms: int) -> None:
        """Account for one event's timestamp."""
        now = self._wall()
        event_ms = min(event_ms, now + self.max_future_skew_ms)
        if self._max_event_ms is None or event_ms > self._projected(now):
            self._max_event_ms = event_ms
            self._wall_at_max_ms = now

    def _projected(self, now: int) -> int:
        """Event time the clock has reached before lateness: the maximum plus idle wall time."""
        if self._max_event_ms is None:
            return now
        return self._max_event_ms + max(0, now - self._wall_at_max_ms)

    def now_ms(self) -> int:
        """The watermark: deadlines at or before it may fire."""
        watermark = self._projected(self._wall()) - self.allowed_lateness_ms
        if self._last_watermark_ms is not None and watermark < self._last_watermark_ms:
            return self._last_watermark_ms
        self._last_watermark_ms = watermark
        return watermark


@dataclass(frozen=True, slots=True)
class DueLead:
    """A lead whose earliest deadline has passed; `partition` holds its state."""

    lead_id: str
    partition: int
    deadline_ms: int


class DeadlineIndex:
    """Earliest pending deadline per lead, ordered in a heap; see the module docstring for the contract."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._entries: dict[str, tuple[int, int, int]] = {}  # lead -> (earliest deadline, partition, count)
        self._pending = 0

    def __len__(self) -> int:
        """Leads with at least one pending deadline."""
        return len(self._entries)

    @property
    def pending_deadlines(self) -> int:
        """Deadlines waiting across all leads (a lead may have several)."""
        return self._pending

    def next_deadline_ms(self) -> int | None:
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def get(self, lead_id: str) -> tuple[int, int] | None:
        """(earliest deadline, partition) of a lead, or None."""
        entry = self._entries.get(lead_id)
        return None if entry is None else (entry[0], entry[1])

    def set(self, lead_id: str, partition: int, deadlines: Sequence[int]) -> None:
        """Replace a lead's pending deadlines (all of them, any order; empty = none left)."""
        if not deadlines:
            self.discard(lead_id)
            return
        earliest = min(deadlines)
        if self._entries.get(lead_id) == (earliest, partition, len(deadlines)):
            return  # unchanged (most events of a lead with a pending deadline): its heap entry stands
        self.discard(lead_id)
        self._entries[lead_id] = (earliest, partition, len(deadlines))
        self._pending += len(deadlines)
        heapq.heappush(self._heap, (earliest, lead_id))
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from live entries: superseded ones would pile up behind far deadlines."""
        self._heap = [(entry[0], lead_id) for lead_id, entry in self._entries.items()]
        heapq.heapify(self._heap)

    def discard(self, lead_id: str) -> None:
        entry = self._entries.pop(lead_id, None)
        if entry is not None:
            self._pending -= entry[2]

    def discard_partitions(self, partitions: Iterable[int]) -> None:
        """Forget leads held by partitions this worker no longer owns."""
        gone = set(partitions)
        for lead_id in [lead for lead, entry in self._entries.items() if entry[1] in gone]:
            self.discard(lead_id)

    def clear(self) -> None:
        self._heap.clear()
        self._entries.clear()
        self._pending = 0

    def _is_current(self, deadline_ms: int, lead_id: str) -> bool:
        entry = self._entries.get(lead_id)
        return entry is not None and entry[0] == deadline_ms

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and not self._is_current(*heap[0]):
            heapq.heappop(heap)

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[DueLead]:
        """Remove and return leads whose earliest deadline is <= now_ms (earliest first, at most `limit`)."""
        due: list[DueLead] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and (limit is None or len(due) < limit):
            deadline_ms, lead_id = heapq.heappop(heap)
            if not self._is_current(deadline_ms, lead_id):
                continue
            partition = self._entries[lead_id][1]
            self.discard(lead_id)
            due.append(DueLead(lead_id, partition, deadline_ms))
        return due
