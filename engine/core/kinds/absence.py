"""`kind: absence` — A not followed by B within T (cart/checkout/browse abandonment, welcome series)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from engine.core.durations import format_duration
from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import Firing, Rule, Slot
from engine.events import format_ts


class AbsenceSlot(NamedTuple):
    """The open episode. Stored as the JSON array of its fields, in this order.

    The deadline is not stored: it is the last `when` (or, with `restart: false`, the start) plus `within`.
    """

    start_ms: int  # the opening `when` match
    opening_id: str  # its message id
    last_offset_ms: int  # the last `when` match, in ms after start_ms (0: the opening one)
    last_id: str | None  # its message id; None while the opening match is the last one
    matches: int  # `when` matches in this episode


@dataclass(frozen=True, slots=True)
class AbsenceLogic:
    """A not followed by B within T.

    Semantics (pinned by tests and the brute-force reference in tests/core):
    - The first `when` match at t opens an episode: start = t, deadline = t + within.
    - Each further `when` match at t moves the deadline to t + within (`restart: false` keeps the first deadline).
    - An `unless` match at t with start <= t <= deadline closes the episode without firing. On one event, `unless`
      is checked before `when`, so an event matching both closes the episode and opens a new one.
    - With `min_matches: N` the episode fires only if it saw at least N `when` matches (browse abandonment: a
      product viewed twice); otherwise it closes silently at the deadline.
    - When event time passes the deadline the rule fires once, `fired_at` = deadline; the next `when` opens a new
      episode.
    Slot: an `AbsenceSlot` (the open episode) or none: one per rule and lead whatever the length of the history.
    """

    when: Matcher
    unless: Matcher | None
    within_ms: int
    restart: bool = True
    min_matches: int = 1
    when_text: str = ""
    unless_text: str = ""

    def load(self, slot: Slot | None) -> AbsenceSlot | None:
        if slot is None or type(slot) is AbsenceSlot:
            return slot
        if type(slot) is list and len(slot) == len(AbsenceSlot._fields):
            return tuple.__new__(AbsenceSlot, slot)  # half the cost of AbsenceSlot(*slot): once per lead and batch
        raise ValueError(f"not an absence slot: {slot!r}")

    def _deadline(self, episode: AbsenceSlot) -> int:
        return episode.start_ms + (episode.last_offset_ms if self.restart else 0) + self.within_ms

    def on_event(self, rule: Rule, slot: Slot | None, ctx: MatchContext) -> tuple[AbsenceSlot | None, list[Firing]]:
        # (the common cases first, without a call: this runs for every event the rule may care about)
        episode = None if slot is None else slot if type(slot) is AbsenceSlot else self.load(slot)
        event = ctx.event
        t = event.timestamp_ms
        unless = self.unless
        if (
            unless is not None
            and episode is not None
            and episode.start_ms <= t <= self._deadline(episode)
            and unless(ctx)
        ):
            episode = None
        if self.when(ctx):
            if episode is None:
                episode = AbsenceSlot(t, event.message_id, 0, None, 1)
            else:
                start, opening, offset, last, matches = episode
                if self.restart and t >= start + offset:
                    offset, last = t - start, event.message_id
                episode = AbsenceSlot(start, opening, offset, last, matches + 1)
        return episode, []

    @property
    def has_deadlines(self) -> bool:
        return True

    def deadline(self, slot: Slot | None) -> int | None:
        if slot is None:
            return None
        episode = slot if type(slot) is AbsenceSlot else self.load(slot)
        if episode is None:
            return None
        # = self._deadline(episode), inlined: asked of every slot with deadlines at every step
        return episode.start_ms + (episode.last_offset_ms if self.restart else 0) + self.within_ms

    def on_deadline(self, rule: Rule, slot: Slot, now_ms: int) -> tuple[None, list[Firing]]:
        episode = self.load(slot)
        if episode is None or episode.matches < self.min_matches:
            return None, []
        start, opening, last_offset, last, matches = episode
        last, last_ms = last or opening, start + last_offset
        deadline = self._deadline(episode)
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

    def merge(self, mine: Slot | None, other: Slot | None) -> AbsenceSlot | None:
        """The earlier episode is kept."""
        a, b = self.load(mine), self.load(other)
        if a is None or b is None:
            return a if b is None else b
        return a if a.start_ms <= b.start_ms else b
