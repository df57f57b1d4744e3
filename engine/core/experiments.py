"""Experiments (docs/rules.md, "Experiments"): the arm a lead is in, and the small per-lead memory that reports
assignments and goal events on `lead-updates`.

The arm is a pure function of the experiment id and the lead id (`assign_arm`), so it is the same across
restarts, replays and workers, and reproducible outside Nudge (ClickHouse SQL included). Nothing about the arm is
stored to decide it; the per-lead memory (`LeadState.experiments`) only remembers when the lead was assigned, for
the `goal_within` window, and is dropped after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.predicates import Matcher, comparable_number

HOLDOUT = "holdout"  # the control arm: its actions are fired and logged, never sent
TREATMENT = "treatment"  # the one non-holdout arm of an experiment without `variants`
DEFAULT_GOAL_WITHIN_MS = 7 * 86_400_000
_SCALE = 2**64


def unit(experiment_id: str, lead_id: str) -> float:
    """`u` in [0, 1): the first 8 bytes of sha256("{experiment_id}:{lead_id}"), big-endian, over 2**64."""
    digest = hashlib.sha256(f"{experiment_id}:{lead_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_arm(experiment_id: str, lead_id: str, holdout: float, variants: Sequence[tuple[str, float]]) -> str:
    """The lead's arm (the fixed formula of issue 19; ClickHouse SQL mirrors it):
    `u = unit(experiment_id, lead_id)`; `u < holdout` → `"holdout"`; otherwise `v = (u - holdout) / (1 - holdout)`
    picks the first variant (in the order listed) whose cumulative weight share exceeds `v`. `variants` are
    `(id, weight)` with positive weights; without variants the non-holdout arm is `"treatment"`.
    `holdout` is a fraction in [0, 1)."""
    u = unit(experiment_id, lead_id)
    if u < holdout:
        return HOLDOUT
    if not variants:
        return TREATMENT
    v = (u - holdout) / (1 - holdout)
    total = sum(weight for _, weight in variants)
    cumulative = 0.0
    for variant_id, weight in variants:
        cumulative += weight
        if cumulative / total > v:
            return variant_id
    return variants[-1][0]  # v within rounding of 1


def money(value: Any) -> float | None:
    """An amount from event properties as a finite float: what `predicates.comparable_number` accepts (a number or a
    numeric string; not a boolean, "nan", "inf" or beyond a float's range: one such order would poison every sum
    and mean of the reports), else None. The ClickHouse rows read revenue with it, so both count the same orders."""
    number = comparable_number(value)
    return None if number is None else float(number)


def goal_value(properties: Mapping[str, Any]) -> float | None:
    """A goal event's value: properties.revenue, else .total, else .value (Segment's Order Completed fields),
    else None. Numbers only (`money`)."""
    for key in ("revenue", "total", "value"):
        value = money(properties.get(key))
        if value is not None:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Variant:
    """One non-holdout arm. `action`: the keys it merges over the rule's action (`connector`, `template`; `payload`
    keys are merged into the action's payload); `goto`: a journey split's step for this arm."""

    id: str
    weight: float
    action: Mapping[str, Any] | None = None
    goto: str | None = None


@dataclass(frozen=True, slots=True)
class Experiment:
    """A compiled experiment: id, holdout fraction, variants (empty: one arm `treatment`), the goal matcher (None:
    no goal records) and its window. `key` names its entry in `LeadState.experiments`; `holdout_goto` is a
    journey split's step for the holdout arm (None: the holdout arm leaves the journey)."""

    id: str
    holdout: float
    variants: tuple[Variant, ...] = ()
    goal: Matcher | None = None
    goal_within_ms: int = DEFAULT_GOAL_WITHIN_MS
    key: str = ""
    holdout_goto: str | None = None

    def __post_init__(self) -> None:
        if not self.key:
            digest = hashlib.blake2b(f"x|{self.id}".encode(), digest_size=4).hexdigest()
            object.__setattr__(self, "key", digest)

    def arm(self, lead_id: str) -> str:
        return assign_arm(self.id, lead_id, self.holdout, [(v.id, v.weight) for v in self.variants])

    def variant(self, arm: str) -> Variant | None:
        return next((v for v in self.variants if v.id == arm), None)


def record(
    event: str,
    lead_id: str,
    at_ms: int,
    experiment: str,
    arm: str,
    rule: str,
    message_id: str | None,
    value: float | None = None,
) -> dict[str, Any]:
    """A `lead-updates` record of kind `experiment`: `assigned` (once per lead and experiment while its goal
    window runs) or `goal` (every goal event within `goal_within` of the assignment, with its `value`)."""
    doc: dict[str, Any] = {
        "kind": "experiment",
        "event": event,
        "lead_id": lead_id,
        "at_ms": at_ms,
        "experiment": experiment,
        "variant": arm,
        "rule": rule,
        "message_id": message_id,
    }
    if event == "goal":
        doc["value"] = value
    return doc
