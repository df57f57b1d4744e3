"""Event-time clocks and indexes of pending per-lead deadlines; the worker keeps one of each per partition it owns.
Pure: no Faust, no I/O."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

DEFAULT_MAX_FUTURE_SKEW_MS = 5_000  # NUDGE_MAX_CLOCK_SKEW_S
NEVER_MS = -(2**62)  # a watermark before any deadline


def wall_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


class EventClock:
    """Answers "up to which event time may deadlines fire now?" for one stream of events (one partition).

        watermark = max_event_ts + (wall_now - wall_when_max_moved) - allowed_lateness

    The idle wall time is a processing-time fallback, so a quiet partition still lets deadlines pass. With live
    traffic (event time ~ wall time) a deadline therefore fires about `allowed_lateness` after it falls due: the
    price of letting an event that arrives up to `allowed_lateness` late (say the purchase that cancels an
    abandonment) still count. Before any event is seen the clock runs on wall time minus the lateness, so a
    restarted worker with recovered deadlines and no new traffic still fires them.

    Promises: the watermark never moves backwards. An event stamped further than `max_future_skew_ms` ahead of
    the wall clock (a device with a wrong clock) moves the clock only up to that bound, so it cannot fire every
    pending deadline early. Raises ValueError for a negative lateness. Not thread-safe.
    """

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

    def observe(self, event_ms: int) -> None:
        """Account for one event's timestamp (any order; an older one changes nothing)."""
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

    def now_ms(self, caught_up: bool = True) -> int:
        """The watermark: deadlines at or before it may fire. Only while `caught_up` (no input below the
        partition's end offset is left unprocessed) does the clock run on wall time when events pause; otherwise
        only events move it (and before the first one it stays where it was), so no deadline fires ahead of
        input that is already in Kafka."""
        if caught_up:
            watermark = self._projected(self._wall()) - self.allowed_lateness_ms
        elif self._max_event_ms is None:
            return self._last_watermark_ms if self._last_watermark_ms is not None else NEVER_MS
        else:
            watermark = self._max_event_ms - self.allowed_lateness_ms
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
    """Each lead's earliest pending deadline, with the partition that holds the lead's state, in a heap.

    The core returns a lead's full list of pending deadlines after every step, so `set()` replaces the lead's
    entry (no reconciling). `pop_due(now)` removes and returns the leads whose earliest deadline is due; the
    worker evaluates a `Tick` for each and `set()`s the lead's remaining deadlines again, so a lead is never
    handed out twice for the same deadline while its tick is being evaluated. Superseded heap entries are dropped
    lazily when they reach the top, and the heap is compacted when they pile up. Not thread-safe.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._entries: dict[str, tuple[int, int, int]] = {}  # lead -> (earliest deadline, partition, count)
        self._pending = 0

    def __len__(self) -> int:
        """Leads with at least one pending deadline."""
        return len(self._entries)

    def __contains__(self, lead_id: object) -> bool:
        """Whether the lead has a pending deadline."""
        return lead_id in self._entries

    def count(self, lead_id: str) -> int:
        """The lead's pending deadlines (0 when it has none)."""
        entry = self._entries.get(lead_id)
        return entry[2] if entry is not None else 0

    @property
    def pending_deadlines(self) -> int:
        """Deadlines waiting across all leads (a lead may have several)."""
        return self._pending

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

    def load(self, partition: int, leads: Iterable[tuple[str, Sequence[int]]]) -> None:
        """`set` for many leads of `partition` at once, into an index that holds none of them (the rebuild after
        recovery): one heapify instead of a push per lead. Leads without deadlines are skipped."""
        entries = self._entries
        for lead_id, deadlines in leads:
            if deadlines:
                if lead_id in entries:
                    raise ValueError(f"lead {lead_id} is indexed already")
                entries[lead_id] = (min(deadlines), partition, len(deadlines))
                self._pending += len(deadlines)
        self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from live entries: superseded ones would pile up behind far deadlines."""
        self._heap = [(entry[0], lead_id) for lead_id, entry in self._entries.items()]
        heapq.heapify(self._heap)

    def discard(self, lead_id: str) -> None:
        """Forget a lead's deadlines (its state moved away); a lead without any is ignored."""
        entry = self._entries.pop(lead_id, None)
        if entry is not None:
            self._pending -= entry[2]

    def _is_current(self, deadline_ms: int, lead_id: str) -> bool:
        entry = self._entries.get(lead_id)
        return entry is not None and entry[0] == deadline_ms

    def may_have_due(self, now_ms: int) -> bool:
        """False when no lead's deadline is due at `now_ms`; True when one may be (a superseded heap entry can make
        it True with nothing due: `pop_due` then returns nothing). O(1)."""
        heap = self._heap
        return bool(heap) and heap[0][0] <= now_ms

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
