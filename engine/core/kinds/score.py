"""`kind: score` — lead scoring: points per matcher, daily caps, half-life decay, thresholds and stages.

Semantics:
- At each event, every `points` entry whose matcher matches adds its points (negative points subtract). With
  `daily_cap`, the absolute points one entry can add per UTC day (event time) are capped.
- With `half_life`, the score decays continuously: value(t) = value(t0) * 2^(-(t - t0) / half_life). Decay is
  computed on read, so it needs no timers.
- A threshold fires when one event moves the score from below `at` to at least `at` (upward crossing). A score
  that decays below and climbs back crosses again (subject to the rule's cooldown).
- `stages:` (name → minimum score, lowest first) give the lead a stage: the highest stage ever reached. Stages
  never go down on decay (a lifecycle does not regress because a lead went quiet); `stage` is visible in
  `if:`, in `lead.stage` matcher paths and in the action context. Issue #8 may set stages from other signals.
Slot: `{"v": value, "t": ms of value, "s": stage, "c": {entry index: [utc_day, points used]}}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import ActionSpec, Firing, Rule

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class PointsRule:
    match: Matcher
    points: float
    daily_cap: float | None = None


@dataclass(frozen=True, slots=True)
class ScoreThreshold:
    at: float
    name: str
    action: ActionSpec | None = None


def _clean(value: float) -> float | int:
    rounded = round(value, 4)
    return int(rounded) if rounded == int(rounded) else rounded


@dataclass(frozen=True, slots=True)
class ScoreLogic:
    points: tuple[PointsRule, ...]
    half_life_ms: int | None = None
    thresholds: tuple[ScoreThreshold, ...] = ()
    stages: tuple[tuple[str, float], ...] = ()

    def value_at(self, slot: Any, now_ms: int) -> float:
        if not slot:
            return 0
        value, t = slot["v"], slot["t"]
        if self.half_life_ms and now_ms > t and value:
            return _clean(value * 2.0 ** (-(now_ms - t) / self.half_life_ms))
        return value

    def stage_of(self, slot: Any) -> str | None:
        return slot.get("s") if slot else None

    def _stage_for(self, value: float, current: str | None) -> str | None:
        names = [name for name, _ in self.stages]
        rank = names.index(current) if current in names else -1
        for index, (name, at) in enumerate(self.stages):
            if value >= at and index > rank:
                current, rank = name, index
        return current

    def on_event(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing]]:
        t = ctx.event.timestamp_ms
        day = t // DAY_MS
        caps = dict(slot.get("c", {})) if slot else {}
        total = 0.0
        matched = False
        for index, entry in enumerate(self.points):
            if not entry.match(ctx):
                continue
            matched = True
            points = entry.points
            if entry.daily_cap is not None:
                key = str(index)
                used = caps[key][1] if key in caps and caps[key][0] == day else 0
                room = max(0.0, entry.daily_cap - used)
                points = min(points, room) if points >= 0 else max(points, -room)
                caps[key] = [day, _clean(used + abs(points))]
            total += points
        if not matched:
            return slot, []
        previous = self.value_at(slot, t)
        value = _clean(previous + total)
        stage = self._stage_for(value, self.stage_of(slot))
        new: dict[str, Any] = {"v": value, "t": max(t, slot["t"]) if slot else t}
        if stage is not None:
            new["s"] = stage
        caps = {k: v for k, v in caps.items() if v[0] == day}
        if caps:
            new["c"] = caps
        firings = [
            self._firing(ctx, threshold, previous, value, stage)
            for threshold in self.thresholds
            if previous < threshold.at <= value
        ]
        return new, firings

    def _firing(
        self, ctx: MatchContext, threshold: ScoreThreshold, previous: float, value: float, stage: str | None
    ) -> Firing:
        event = ctx.event
        label = event.name or event.type
        text = (
            f"score rose from {round(previous, 2):g} to {round(value, 2):g} on '{label}' "
            f"(message {event.message_id}), "
            f"crossing {threshold.name} at {threshold.at:g}"
        )
        return Firing(
            at_ms=event.timestamp_ms,
            key=f"{threshold.name}:{event.timestamp_ms}:{event.message_id}",
            trigger=(event.message_id,),
            trigger_time_ms=event.timestamp_ms,
            explanation=text,
            action=threshold.action,
            details={
                "threshold": threshold.name,
                "at": threshold.at,
                "score": value,
                "previous": previous,
                "stage": stage,
            },
        )

    def deadline(self, slot: Any) -> int | None:
        return None

    def on_deadline(self, rule: Rule, slot: Any, now_ms: int) -> tuple[Any, list[Firing]]:
        return slot, []

    @property
    def shape(self) -> str:
        return "score"

    def merge(self, mine: Any, other: Any) -> Any:
        if not mine or not other:
            return mine or other
        t = max(mine["t"], other["t"])
        value = _clean(self.value_at(mine, t) + self.value_at(other, t))
        names = [name for name, _ in self.stages]
        stages = [s for s in (mine.get("s"), other.get("s")) if s in names]
        merged: dict[str, Any] = {"v": value, "t": t}
        stage = self._stage_for(value, max(stages, key=names.index) if stages else None)
        if stage is not None:
            merged["s"] = stage
        return merged
