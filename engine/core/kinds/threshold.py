"""`kind: threshold` — count or sum of matching events in a sliding window (hot lead, big spender)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from engine.core.durations import format_duration
from engine.core.facts import finite_number
from engine.core.kinds import EventDriven
from engine.core.predicates import Getter, MatchContext, Matcher
from engine.core.ruleset import Firing, Rule, Slot
from engine.events import format_ts

MAX_SUM_ENTRIES = 100


class Hit(NamedTuple):
    """A matching event in a count window; stored as `[t_ms, message_id]`."""

    t_ms: int
    message_id: str


class Amount(NamedTuple):
    """A matching event in a sum window and its number; stored as `[t_ms, message_id, value]`."""

    t_ms: int
    message_id: str
    value: float


class CountWindow(tuple[Hit, ...]):
    """The slot of a count threshold (a tuple subclass: one entry per event in the window)."""

    __slots__ = ()


class SumWindow(tuple[Amount, ...]):
    """The slot of a sum threshold."""

    __slots__ = ()


Entry = TypeVar("Entry", Hit, Amount)


def _slide(window: Sequence[Entry], entry: Entry, horizon: int, cap: int) -> list[Entry]:
    """`entry` added after the entries of the same time (ties are taken in input order), entries at or before
    `horizon` dropped, then only the newest `cap` kept."""
    entries = list(window)
    entries.insert(bisect.bisect_right([e.t_ms for e in entries], entry.t_ms), entry)
    entries = [e for e in entries if e.t_ms > horizon]
    return entries[-cap:] if len(entries) > cap else entries


@dataclass(frozen=True, slots=True)
class ThresholdLogic(EventDriven):
    """Count or sum of matching events in a sliding window.

    Semantics (pinned by tests and the brute-force reference in tests/core):
    - At each matching event at time t, consider the matching events in (t - within, t] (ties: input order, so
      events with equal timestamps already taken in count).
    - count mode: fire at t when there are at least `count` of them; sum mode: when the sum of `sum.field` over
      them is at least `sum.gte` (events whose field is missing or not a number do not match).
    - Repeats are governed by the common gates: cooldown (default = within) measured from the last fire of this
      rule for this lead, then `max_per_lead`, then `if:`.
    Slot: the window (`CountWindow` or `SumWindow`) sorted by time, pruned to `within` and capped: count mode keeps
    only the newest `count` entries, sum mode the newest `MAX_SUM_ENTRIES`.
    """

    match: Matcher
    within_ms: int
    count: int | None = None  # count mode; otherwise sum mode (sum_field, sum_gte)
    sum_field: Getter | None = None
    sum_field_name: str = ""
    sum_gte: float = 0.0
    match_text: str = ""

    def load(self, slot: Slot | None) -> CountWindow | SumWindow | None:
        if slot is None or type(slot) is CountWindow or type(slot) is SumWindow:
            return slot
        if type(slot) is list:
            if self.count is not None:
                return CountWindow(Hit(t, message_id) for t, message_id in slot)
            return SumWindow(Amount(t, message_id, value) for t, message_id, value in slot)
        raise ValueError(f"not a threshold slot: {slot!r}")

    def _hits(self, slot: Slot | None) -> CountWindow:
        window = self.load(slot)
        if window is None or type(window) is CountWindow:
            return window or CountWindow()
        raise ValueError(f"a sum window in a count threshold: {window!r}")

    def _amounts(self, slot: Slot | None) -> SumWindow:
        window = self.load(slot)
        if window is None or type(window) is SumWindow:
            return window or SumWindow()
        raise ValueError(f"a count window in a sum threshold: {window!r}")

    def on_event(
        self, rule: Rule, slot: Slot | None, ctx: MatchContext
    ) -> tuple[CountWindow | SumWindow | None, list[Firing]]:
        if not self.match(ctx):
            return self.load(slot), []
        event = ctx.event
        t = event.timestamp_ms
        horizon = t - self.within_ms
        if self.count is not None:
            hits = _slide(self._hits(slot), Hit(t, event.message_id), horizon, self.count)
            in_window = [e for e in hits if e.t_ms <= t]
            if len(in_window) < self.count:
                return CountWindow(hits), []
            used = in_window[-self.count :]
            return CountWindow(hits), [self._firing(event.message_id, t, used, len(in_window), None)]
        value = finite_number(self.sum_field(ctx.doc)) if self.sum_field is not None else None
        if value is None:
            return self.load(slot), []
        amounts = _slide(self._amounts(slot), Amount(t, event.message_id, value), horizon, MAX_SUM_ENTRIES)
        counted = [e for e in amounts if e.t_ms <= t]
        total = sum(e.value for e in counted)
        if total < self.sum_gte:
            return SumWindow(amounts), []
        return SumWindow(amounts), [self._firing(event.message_id, t, counted, len(counted), total)]

    def _firing(self, message_id: str, t: int, used: Sequence[Hit | Amount], n: int, total: float | None) -> Firing:
        within = format_duration(self.within_ms)
        if total is None:
            condition = f"{n} x {self.match_text} within {within} reached count {self.count}"
        else:
            condition = (
                f"sum of {self.sum_field_name} over {n} x {self.match_text} within {within} is {total:g}, "
                f"reaching {self.sum_gte:g}"
            )
        text = f"{condition} (from {format_ts(used[0].t_ms)} to {format_ts(t)})"
        details: dict[str, Any] = {"count": n, "window_start": used[0].t_ms}
        if total is not None:
            details["sum"] = total
        return Firing(
            at_ms=t,
            key=f"{t}:{message_id}",
            trigger=tuple(e.message_id for e in used),
            trigger_time_ms=t,
            explanation=text,
            details=details,
        )

    @property
    def shape(self) -> str:
        return "threshold:count" if self.count is not None else "threshold:sum"

    def merge(self, mine: Slot | None, other: Slot | None) -> CountWindow | SumWindow | None:
        """The two windows united (by time; the other lead's entries first on ties), capped as usual."""
        if self.count is not None:
            hits = sorted([*self._hits(other), *self._hits(mine)], key=lambda e: e.t_ms)[-self.count :]
            return CountWindow(hits) if hits else None
        amounts = sorted([*self._amounts(other), *self._amounts(mine)], key=lambda e: e.t_ms)[-MAX_SUM_ENTRIES:]
        return SumWindow(amounts) if amounts else None
