"""One module per rule kind; each exports a `*Logic` class implementing `engine.core.ruleset.RuleLogic` and the
typed slot it keeps in per-lead state."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from engine.core.ruleset import Firing, Rule, Slot

S = TypeVar("S")


class EventDriven:
    """For kinds that act only when an event arrives (threshold, sequence, score): no deadline, ever.

    A mixin without fields (`__slots__ = ()`), so the frozen, slotted logic dataclasses stay slotted.
    """

    __slots__ = ()

    @property
    def has_deadlines(self) -> bool:
        return False

    def deadline(self, slot: Slot | None) -> int | None:
        return None

    def on_deadline(self, rule: Rule, slot: S, now_ms: int) -> tuple[S, list[Firing]]:
        return slot, []
