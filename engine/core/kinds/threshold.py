"""`kind: threshold` — count or sum of matching events in a sliding window (hot lead, big spender)."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.core.durations import format_duration
from engine.core.facts import finite_number
from engine.core.kinds import EventDriven
from engine.core.predicates import Getter, MatchContext, Matcher
from engine.core.ruleset import Firing, Rule, Slot
from engine.events import format_ts

MAX_SUM_ENTRIES = 100


# A window is kept as columns, not as a list of entries: reading it back from stored JSON is one tuple() per column
# instead of one object per entry (a sum window holds up to MAX_SUM_ENTRIES), its times are searched with bisect,
# and the stored array is shorter.
class CountWindow(NamedTuple):
    """The slot of a count threshold: the matching events in the window, oldest first (equal times in input
    order). Stored as `[[t_ms, ...], [message_id, ...]]`."""

    times: tuple[int, ...]
    message_ids: tuple[str, ...]


class SumWindow(NamedTuple):
    """The slot of a sum threshold: as `CountWindow`, plus each event's number. Stored as
    `[[t_ms, ...], [message_id, ...], [value, ...]]`."""

    times: tuple[int, ...]
    message_ids: tuple[str, ...]
    values: tuple[float, ...]


def _is_entry_list(stored: list[Any]) -> bool:
    """A window stored before windows were columns: `[[t_ms, message_id(, value)], ...]` (its first item is an
    entry, whose second field is a message id; in columns it is the times)."""
    return len(stored[0]) > 1 and type(stored[0][1]) is str


def _kept(times: tuple[int, ...], horizon: int, cap: int) -> int:
    """Index of the first entry kept: newer than `horizon`, and at most the newest `cap`."""
    return max(bisect_right(times, horizon), len(times) - cap, 0)


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
    Slot: the window (`CountWindow` or `SumWindow`), pruned to `within` and capped: count mode keeps only the
    newest `count` entries, sum mode the newest `MAX_SUM_ENTRIES`.
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
        if type(slot) is list and slot:
            if self.count is not None:
                if _is_entry_list(slot):
                    return CountWindow(tuple([e[0] for e in slot]), tuple([e[1] for e in slot]))
                if len(slot) == 2:
                    return CountWindow(tuple(slot[0]), tuple(slot[1]))
            else:
                if _is_entry_list(slot):
                    return SumWindow(
                        tuple([e[0] for e in slot]), tuple([e[1] for e in slot]), tuple([e[2] for e in slot])
                    )
                if len(slot) == 3:
                    return SumWindow(tuple(slot[0]), tuple(slot[1]), tuple(slot[2]))
        raise ValueError(f"not a threshold:{'count' if self.count is not None else 'sum'} slot: {slot!r}")

    def _hits(self, slot: Slot | None) -> CountWindow:
        window = slot if type(slot) is CountWindow else self.load(slot)
        if window is None:
            return CountWindow((), ())
        if type(window) is CountWindow:
            return window
        raise ValueError(f"a sum window in a count threshold: {window!r}")

    def _amounts(self, slot: Slot | None) -> SumWindow:
        window = slot if type(slot) is SumWindow else self.load(slot)
        if window is None:
            return SumWindow((), (), ())
        if type(window) is SumWindow:
            return window
        raise ValueError(f"a count window in a sum threshold: {window!r}")

    def on_event(
        self, rule: Rule, slot: Slot | None, ctx: MatchContext
    ) -> tuple[CountWindow | SumWindow | None, list[Firing]]:
        if not self.match(ctx):
            return self.load(slot), []
        event = ctx.event
        t, message_id = event.timestamp_ms, event.message_id
        horizon = t - self.within_ms
        if self.count is not None:
            times, ids = self._hits(slot)
            i = bisect_right(times, t)  # after the entries of the same time: ties are taken in input order
            times, ids = (*times[:i], t, *times[i:]), (*ids[:i], message_id, *ids[i:])
            k = _kept(times, horizon, self.count)
            counted = CountWindow(times[k:], ids[k:])
            n = bisect_right(counted.times, t)  # entries at or before t (a late event has newer ones after it)
            if n < self.count:
                return counted, []
            used = slice(n - self.count, n)
            return counted, [self._firing(message_id, t, counted.times[used], counted.message_ids[used], n, None)]
        value = finite_number(self.sum_field(ctx.doc)) if self.sum_field is not None else None
        if value is None:
            return self.load(slot), []
        times, ids, values = self._amounts(slot)
        i = bisect_right(times, t)
        times, ids = (*times[:i], t, *times[i:]), (*ids[:i], message_id, *ids[i:])
        values = (*values[:i], value, *values[i:])
        k = _kept(times, horizon, MAX_SUM_ENTRIES)
        summed = SumWindow(times[k:], ids[k:], values[k:])
        n = bisect_right(summed.times, t)
        total = sum(summed.values[:n])
        if total < self.sum_gte:
            return summed, []
        return summed, [self._firing(message_id, t, summed.times[:n], summed.message_ids[:n], n, total)]

    def _firing(
        self, message_id: str, t: int, times: tuple[int, ...], ids: tuple[str, ...], n: int, total: float | None
    ) -> Firing:
        within = format_duration(self.within_ms)
        if total is None:
            condition = f"{n} x {self.match_text} within {within} reached count {self.count}"
        else:
            condition = (
                f"sum of {self.sum_field_name} over {n} x {self.match_text} within {within} is {total:g}, "
                f"reaching {self.sum_gte:g}"
            )
        text = f"{condition} (from {format_ts(times[0])} to {format_ts(t)})"
        details: dict[str, Any] = {"count": n, "window_start": times[0]}
        if total is not None:
            details["sum"] = total
        return Firing.at_event(t, f"{t}:{message_id}", ids, text, details)

    @property
    def shape(self) -> str:
        return "threshold:count" if self.count is not None else "threshold:sum"

    def merge(self, mine: Slot | None, other: Slot | None) -> CountWindow | SumWindow | None:
        """The two windows united (by time; the other lead's entries first on equal times), capped as usual."""
        if self.count is not None:
            a, b = self._hits(other), self._hits(mine)
            pairs = [*zip(*a, strict=True), *zip(*b, strict=True)]
            hits = sorted(pairs, key=_time)[-self.count :]
            return CountWindow(tuple([h[0] for h in hits]), tuple([h[1] for h in hits])) if hits else None
        c, d = self._amounts(other), self._amounts(mine)
        amounts = sorted([*zip(*c, strict=True), *zip(*d, strict=True)], key=_time)[-MAX_SUM_ENTRIES:]
        if not amounts:
            return None
        return SumWindow(tuple([e[0] for e in amounts]), tuple([e[1] for e in amounts]), tuple([e[2] for e in amounts]))


def _time(entry: tuple[int, Any] | tuple[int, Any, Any]) -> int:
    return entry[0]
