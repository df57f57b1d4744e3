"""`kind: threshold` — count or sum of matching events in a sliding window (hot lead, big spender).

Semantics (pinned by tests and the brute-force reference in tests/core):
- At each matching event at time t, consider the matching events in (t - within, t] (ties: input order, so
  events with equal timestamps already taken in count).
- count mode: fire at t when there are at least `count` of them; sum mode: when the sum of `sum.field` over
  them is at least `sum.gte` (events whose field is missing or not a number do not match).
- Repeats are governed by the common gates: cooldown (default = within) measured from the last fire of this
  rule for this lead, then `max_per_lead`, then `if:`.
Slot: the window, a list of `[t, message_id]` (count) or `[t, message_id, value]` (sum) sorted by t, pruned to
the window and capped (count mode keeps only the newest `count` entries; sum mode the newest
`MAX_SUM_ENTRIES`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from engine.core.durations import format_duration
from engine.core.facts import finite_number as _number
from engine.core.predicates import Getter, MatchContext, Matcher
from engine.core.ruleset import Firing, Rule
from engine.events import format_ts

MAX_SUM_ENTRIES = 100
@dataclass(frozen=True, slots=True)
class ThresholdLogic:
    match: Matcher
    within_ms: int
    count: int | None = None
    sum_field: Getter | None = None
    sum_field_name: str = ""
    sum_gte: float = 0.0
    match_text: str = ""

    def on_event(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing]]:
        if not self.match(ctx):
            return slot, []
        event = ctx.event
        t = event.timestamp_ms
        if self.sum_field is not None:
            value = _number(self.sum_field(ctx.doc))
            if value is None:
                return slot, []
            entry: list[Any] = [t, event.message_id, value]
        else:
            entry = [t, event.message_id]
        window = list(slot or ())
        # insert after entries with the same time: ties are taken in input order
        window.insert(bisect.bisect_right([e[0] for e in window], t), entry)
        horizon = t - self.within_ms
        window = [e for e in window if e[0] > horizon]
        cap = self.count if self.count is not None else MAX_SUM_ENTRIES
        if len(window) > cap:
            window = window[-cap:]
        in_window = [e for e in window if e[0] <= t]
        firings: list[Firing] = []
        if self.count is not None:
            if len(in_window) >= self.count:
                firings.append(self._firing(event.message_id, t, in_window[-self.count :], len(in_window), None))
        else:
            total = sum(e[2] for e in in_window)
            if total >= self.sum_gte:
                firings.append(self._firing(event.message_id, t, in_window, len(in_window), total))
        return window, firings

    def _firing(self, message_id: str, t: int, used: list[list[Any]], n: int, total: float | None) -> Firing:
        within = format_duration(self.within_ms)
        if total is None:
            condition = f"{n} x {self.match_text} within {within} reached count {self.count}"
        else:
            condition = (
                f"sum of {self.sum_field_name} over {n} x {self.match_text} within {within} is {total:g}, "
                f"reaching {self.sum_gte:g}"
            )
        text = f"{condition} (from {format_ts(used[0][0])} to {format_ts(t)})"
        details: dict[str, Any] = {"count": n, "window_start": used[0][0]}
        if total is not None:
            details["sum"] = total
        return Firing(
            at_ms=t,
            key=f"{t}:{message_id}",
            trigger=tuple(e[1] for e in used),
            trigger_time_ms=t,
            explanation=text,
            details=details,
        )

    def deadline(self, slot: Any) -> int | None:
        return None

    def on_deadline(self, rule: Rule, slot: Any, now_ms: int) -> tuple[Any, list[Firing]]:
        return slot, []

    @property
    def shape(self) -> str:
        return "threshold:count" if self.count is not None else "threshold:sum"

    def merge(self, mine: Any, other: Any) -> Any:
        window = sorted([*(other or ()), *(mine or ())], key=lambda e: e[0])
        cap = self.count if self.count is not None else MAX_SUM_ENTRIES
        return window[-cap:] or None
