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
Slot: `[start_ms, deadline_ms, opening_message_id, last_when_message_id, last_when_ms, when_matches]`
or absent: one per rule and lead whatever the length of the history.
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
        if slot is not None and self.unless is not None and slot[0] <= t <= slot[1] and self.unless(ctx):
            slot = None
        if self.when(ctx):
            if slot is None:
                slot = [t, t + self.within_ms, event.message_id, event.message_id, t, 1]
            elif self.restart and t >= slot[4]:
                slot = [slot[0], max(slot[1], t + self.within_ms), slot[2], event.message_id, t, slot[5] + 1]
            else:
                slot = [*slot[:5], slot[5] + 1]
        return slot, []

    def deadline(self, slot: Any) -> int | None:
        return None if slot is None else slot[1]

    def on_deadline(self, rule: Rule, slot: Any, now_ms: int) -> tuple[Any, list[Firing]]:
        start, deadline, opening, last, last_ms, matches = slot
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

    def merge(self, mine: Any, other: Any) -> Any:
        if mine is None or other is None:
            return mine if other is None else other
        return mine if mine[0] <= other[0] else other
