"""`kind: sequence` — A then B [then C ...] within T, each step with its own matcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from engine.core.durations import format_duration
from engine.core.kinds import EventDriven
from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import Firing, Rule, Slot
from engine.events import format_ts

# A partial chain: (start_ms: when its first step matched, the message ids of the steps matched so far); a plain
# typed tuple, like every entry repeated inside a slot (see `Slot` in engine/core/ruleset.py).
Chain: TypeAlias = tuple[int, tuple[str, ...]]


class SequenceSlot(tuple[Chain | None, ...]):
    """One entry per non-final step k: the kept chain that has reached step k, or None.

    A tuple subclass rather than a NamedTuple because its length is the rule's (steps - 1). Stored as the JSON
    array `[[start_ms, [message ids]] | null, ...]`.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SequenceLogic(EventDriven):
    """A then B [then C ...] within T.

    Semantics:
    - The chain must complete within `within` of its first step: step k at t extends a partial chain that reached
      step k-1 and started at s when t - s <= within. The rule fires at the event completing the last step.
    - For each step only the partial chain with the latest start is kept (a later start leaves strictly more time,
      so it dominates); one event may advance several chains (steps are tried from last to first) but never two
      steps of one.
    - After firing, all partial chains are cleared: the next chain starts from a fresh first step.
    Slot: a `SequenceSlot` (the partial chains) or none when there is no partial chain.
    """

    steps: tuple[Matcher, ...]
    within_ms: int
    step_texts: tuple[str, ...] = ()

    def load(self, slot: Slot | None) -> SequenceSlot | None:
        if slot is None or type(slot) is SequenceSlot:
            return slot
        if type(slot) is list and len(slot) == len(self.steps) - 1:
            return SequenceSlot([None if c is None else (c[0], tuple(c[1])) for c in slot])
        raise ValueError(f"not a {len(self.steps)}-step sequence slot: {slot!r}")

    def on_event(self, rule: Rule, slot: Slot | None, ctx: MatchContext) -> tuple[SequenceSlot | None, list[Firing]]:
        kept = None if slot is None else slot if type(slot) is SequenceSlot else self.load(slot)  # (no call: hot path)
        event = ctx.event
        t = event.timestamp_ms
        last = len(self.steps) - 1
        if kept is None:
            chains: list[Chain | None] = [None] * last
            changed = False
        else:
            chains = [c if c is not None and t - c[0] <= self.within_ms else None for c in kept]
            changed = chains != list(kept)  # a chain ran out of time
        for k in range(last, 0, -1):
            previous = chains[k - 1]
            if previous is None or t < previous[0] or not self.steps[k](ctx):
                continue
            start, ids = previous[0], (*previous[1], event.message_id)
            if k == last:
                return None, [self._firing(start, ids, t, event.message_id)]
            current = chains[k]
            if current is None or current[0] <= start:
                chains[k] = (start, ids)
                changed = True
        if self.steps[0](ctx):
            chains[0] = (t, (event.message_id,))
            changed = True
        if not changed:
            return kept, []
        return (SequenceSlot(chains) if any(c is not None for c in chains) else None), []

    def _firing(self, start: int, ids: tuple[str, ...], t: int, message_id: str) -> Firing:
        steps = " then ".join(self.step_texts)
        text = (
            f"{steps} completed within {format_duration(self.within_ms)} "
            f"(from {format_ts(start)} to {format_ts(t)}; messages {', '.join(ids)})"
        )
        return Firing.at_event(t, f"{start}:{ids[0]}:{message_id}", ids, text, {"started_at": start, "steps": len(ids)})

    @property
    def shape(self) -> str:
        return f"sequence:{len(self.steps)}"

    def merge(self, mine: Slot | None, other: Slot | None) -> SequenceSlot | None:
        """Per step, the chain that started later (it has more time left)."""
        a, b = self.load(mine), self.load(other)
        if a is None or b is None:
            return a if b is None else b
        return SequenceSlot(
            x if y is None or (x is not None and x[0] >= y[0]) else y for x, y in zip(a, b, strict=True)
        )
