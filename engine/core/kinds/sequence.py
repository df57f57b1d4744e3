"""`kind: sequence` — A then B [then C ...] within T, each step with its own matcher.

Semantics:
- The chain must complete within `within` of its first step: step k at t extends a partial chain that reached
  step k-1 and started at s when t - s <= within. The rule fires at the event completing the last step.
- For each step only the partial chain with the latest start is kept (a later start leaves strictly more time,
  so it dominates); one event may advance several chains (steps are tried from last to first) but never two
  steps of one.
- After firing, all partial chains are cleared: the next chain starts from a fresh first step.
Slot: a list with one entry per non-final step, `None` or `[start_ms, [message ids]]`; absent when all are
`None`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.durations import format_duration
from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import Firing, Rule
from engine.events import format_ts


@dataclass(frozen=True, slots=True)
class SequenceLogic:
    steps: tuple[Matcher, ...]
    within_ms: int
    step_texts: tuple[str, ...] = ()

    def on_event(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing]]:
        event = ctx.event
        t = event.timestamp_ms
        last = len(self.steps) - 1
        chains: list[Any] = list(slot) if slot else [None] * last
        chains = [c if c is not None and t - c[0] <= self.within_ms else None for c in chains]
        changed = chains != (list(slot) if slot else [None] * last)
        for k in range(last, 0, -1):
            previous = chains[k - 1]
            if previous is None or t < previous[0] or not self.steps[k](ctx):
                continue
            ids = [*previous[1], event.message_id]
            if k == last:
                return None, [self._firing(previous[0], ids, t, event.message_id)]
            if chains[k] is None or chains[k][0] <= previous[0]:
                chains[k] = [previous[0], ids]
                changed = True
        if self.steps[0](ctx):
            chains[0] = [t, [event.message_id]]
            changed = True
        if not changed:
            return slot, []
        return (chains if any(c is not None for c in chains) else None), []

    def _firing(self, start: int, ids: list[str], t: int, message_id: str) -> Firing:
        steps = " then ".join(self.step_texts)
        text = (
            f"{steps} completed within {format_duration(self.within_ms)} "
            f"(from {format_ts(start)} to {format_ts(t)}; messages {', '.join(ids)})"
        )
        return Firing(
            at_ms=t,
            key=f"{start}:{ids[0]}:{message_id}",
            trigger=tuple(ids),
            trigger_time_ms=t,
            explanation=text,
            details={"started_at": start, "steps": len(ids)},
        )

    def deadline(self, slot: Any) -> int | None:
        return None

    def on_deadline(self, rule: Rule, slot: Any, now_ms: int) -> tuple[Any, list[Firing]]:
        return slot, []

    @property
    def shape(self) -> str:
        return f"sequence:{len(self.steps)}"

    def merge(self, mine: Any, other: Any) -> Any:
        if mine is None or other is None:
            return mine if other is None else other
        return [a if b is None or (a is not None and a[0] >= b[0]) else b for a, b in zip(mine, other, strict=True)]
