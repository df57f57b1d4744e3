"""`kind: absence` — A not followed by B within T (cart/checkout/browse abandonment, welcome series).

Semantics (pinned by tests and the brute-force reference in tests/core):
- The first `when` match at t opens an episode: start = t, deadline = t + within.
- Each further `when` match at t moves the deadline to t + within (`restart: false` keeps the first deadline).
- An `unless` match at t with start <= t <= deadline closes the episode without firing. On one event, `unless`
  is checked before `when`, so an event matching both closes the episode and opens a new one.
- With `min_matches: N` the episode fires only if it saw at least N `when` matches (browse abandonment: a
  product viewed twice); otherwise it closes silently at the deadline.
- When event time passes the deadline the rule fires once, `fired_at` = deadline; the next `when` opens a new
  episode.
Slot: `[start_ms, opening_message_id, last_when_ms - start_ms, last_when_message_id | null, when_matches]` or
absent: one per rule and lead whatever the length of the history. The deadline is derived: the last `when`
(or, with `restart: false`, the start) plus within.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.durations import format_duration
from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import Firing, Rule
from engine.events import format_ts


@dataclass(frozen=True, slots=True)
class AbsenceLogic:
    when: Matcher
    unless: Matcher | None
    within_ms: int
    restart: bool = True
    min_matches: int = 1
    when_text: str = ""
    unless_text: str = ""

    def on_event(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing]]:
        event = ctx.event
        t = event.timestamp_ms
        closable = slot is not None and self.unless is not None and slot[0] <= t <= self.deadline(slot)
        if closable and self.unless(ctx):  # type: ignore[misc]
            slot = None
        if self.when(ctx):
            if slot is None:
                slot = [t, event.message_id, 0, None, 1]
            elif self.restart and t >= slot[0] + slot[2]:
                slot = [slot[0], slot[1], t - slot[0], event.message_id, slot[4] + 1]
            else:
                slot = [*slot[:4], slot[4] + 1]
        return slot, []

    def deadline(self, slot: Any) -> int | None:
        if slot is None:
            return None
        return slot[0] + (slot[2] if self.restart else 0) + self.within_ms

    def on_deadline(self, rule: Rule, slot: Any, now_ms: int) -> tuple[Any, list[Firing]]:
        start, opening, last_offset, last, matches = slot
        last, last_ms = last or opening, start + last_offset
        deadline = self.deadline(slot)
        if matches < self.min_matches:
            return None, []
        trigger = (opening,) if opening == last else (opening, last)
        text = f"{self.when_text} at {format_ts(start)} (message {opening})"
        if matches > 1:
            text += f", {matches} times"
        if last != opening:
            text += f", last at {format_ts(last_ms)} (message {last})"
        absent = self.unless_text if self.unless is not None else "another matching event"
        text += (
            f" was not followed by {absent} within {format_duration(self.within_ms)}; "
            f"deadline {format_ts(deadline)} passed"
        )
        firing = Firing(
            at_ms=deadline,
            key=f"{start}:{opening}",
            trigger=trigger,
            trigger_time_ms=deadline,
            explanation=text,
            details={"episode_start": start, "deadline": deadline, "matches": matches},
        )
        return None, [firing]

    @property
    def shape(self) -> str:
        return "absence"

    def merge(self, mine: Any, other: Any) -> Any:
        if mine is None or other is None:
            return mine if other is None else other
        return mine if mine[0] <= other[0] else other
