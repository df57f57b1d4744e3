"""`kind: score` — lead scoring: points per matcher, daily caps, half-life decay, thresholds, stages, reasons.

Semantics:
- At each event, every `points` entry whose matcher matches adds its points (negative points subtract). With
  `daily_cap`, the absolute points one entry can add per UTC day (event time) are capped.
- With `half_life`, the score decays continuously: value(t) = value(t0) * 2^(-(t - t0) / half_life). Decay is
  computed on read, so it needs no timers.
- A threshold fires when one event moves the score from below `at` to at least `at` (upward crossing). A score
  that decays below and climbs back crosses again (subject to the rule's cooldown).
- `stages:` (name → minimum score or null, lowest first) and `stage_on:` (event → stage) give the lead a
  lifecycle stage; see `engine.core.stages` for the forward-only rules and `allow_backward`. `stage` is
  visible in `if:`, in `lead.stage` matcher paths and in the action context. `step()` also reports the
  `StageChange` so `evaluate` can publish it and apply the `Stage Changed` event to the other rules.
- Explanations: the slot keeps the `TOP` events that contributed most to the score *now* (decayed), each with
  its message id, the points entry that matched, its points and event time. Ranking by log2|points| + t /
  half_life orders contributions by their current decayed value whatever "now" is, so the kept set never has
  to be recomputed as time passes.
- The slot stays small (state must be under 1 KiB per lead): message ids longer than `MAX_ID` keep their last
  `MAX_ID - 1` characters after a `~` (the tail is what differs between ids: UUIDs, counters, ULIDs), and
  times are stored as seconds before the slot's `t`.
Slot: `{"v": value, "t": ms of value, "s": stage, "c": {entry index: [utc_day, points used]},
"x": [[message id, entry index, points, seconds before t], ...]}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import ActionSpec, Firing, Rule
from engine.core.stages import StageChange, StageLadder, StageOn

DAY_MS = 86_400_000
TOP = 3  # contributions kept per lead for explanations (state must stay under 1 KiB per lead)
MAX_ID = 17  # characters of a message id kept in state


@dataclass(frozen=True, slots=True)
class PointsRule:
    match: Matcher
    points: float
    daily_cap: float | None = None
    text: str = ""  # the matcher described, for explanations


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
    stages: tuple[tuple[str, float | None], ...] = ()
    stage_on: tuple[StageOn, ...] = ()
    on_stage: tuple[tuple[str, ActionSpec], ...] = ()  # stage entered -> action fired (hot lead at sql)
    stage_on_names: frozenset[str] | None = None  # track names `stage_on` can match (None: any event)
    ladder: StageLadder = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", StageLadder(self.stages))

    def _stage_moves(self, ctx: MatchContext) -> list[StageOn]:
        if not self.stage_on:
            return []
        names, event = self.stage_on_names, ctx.event
        if names is not None and (event.type != "track" or event.name not in names):
            return []  # cheap pre-filter: this runs on every event the score rule sees
        return [entry for entry in self.stage_on if entry.match(ctx)]

    def value_at(self, slot: Any, now_ms: int) -> float:
        if not slot:
            return 0
        value, t = slot["v"], slot["t"]
        if self.half_life_ms and now_ms > t and value:
            return _clean(value * 2.0 ** (-(now_ms - t) / self.half_life_ms))
        return value

    def stage_of(self, slot: Any) -> str | None:
        return slot.get("s") if slot else None

    def _decayed(self, points: float, t: int, now_ms: int) -> float:
        if self.half_life_ms and now_ms > t:
            return _clean(points * 2.0 ** (-(now_ms - t) / self.half_life_ms))
        return points

    def _weight(self, entry: list[Any]) -> tuple[float, float]:
        points, t = entry[2], -entry[3]  # ranked within one slot: seconds before t, negated, order like times
        if not points:
            return (-math.inf, t)
        if self.half_life_ms:
            return (math.log2(abs(points)) + t * 1000 / self.half_life_ms, t)
        return (abs(points), t)

    def top(self, slot: Any, now_ms: int) -> list[dict[str, Any]]:
        """The kept contributions, largest first, as the lead view and templates show them."""
        out = []
        for message_id, index, points, age_s in (slot or {}).get("x", ()):
            t = slot["t"] - age_s * 1000
            text = self.points[index].text if 0 <= index < len(self.points) else ""
            out.append(
                {
                    "message_id": message_id,
                    "matcher": text,
                    "points": points,
                    "now": self._decayed(points, t, now_ms),
                    "at_ms": t,
                }
            )
        return out

    def _contributions(self, slot: Any, ctx: MatchContext, index: int, points: float, t: int) -> list[list[Any]]:
        """The kept contributions plus this event's, re-based on the new slot time `t`."""
        shift = (t - slot["t"]) // 1000 if slot else 0
        kept = [[m, i, p, age + shift] for m, i, p, age in (slot or {}).get("x", ())]
        if points:
            event = ctx.event
            message_id = event.message_id
            if len(message_id) > MAX_ID:
                message_id = "~" + message_id[1 - MAX_ID :]
            kept.append([message_id, index, _clean(points), (t - event.timestamp_ms) // 1000])
            kept.sort(key=self._weight, reverse=True)
        return kept[:TOP]

    def on_event(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing]]:
        new, firings, _ = self.step(rule, slot, ctx)
        return new, firings

    def step(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing], StageChange | None]:
        t = ctx.event.timestamp_ms
        day = t // DAY_MS
        caps = dict(slot.get("c", {})) if slot else {}
        total = 0.0
        matched = False
        best, best_points = -1, 0.0
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
            if best < 0 or abs(points) > abs(best_points):
                best, best_points = index, points
        moves = self._stage_moves(ctx)
        if not matched and not moves:
            return slot, [], None
        old_stage = self.stage_of(slot)
        previous = self.value_at(slot, t)
        if matched:
            value = _clean(previous + total)
            new: dict[str, Any] = {"v": value, "t": max(t, slot["t"]) if slot else t}
        else:
            value = previous
            new = {"v": slot["v"], "t": slot["t"]} if slot else {"v": 0, "t": t}
        stage, reached = self.ladder.by_score(old_stage, previous, value)
        reason = f"score {round(value, 2):g} reached {stage} at {reached:g}" if reached is not None else ""
        stage, reason = self._event_moves(moves, ctx, stage, reason)
        if stage is not None:
            new["s"] = stage
        caps = {k: v for k, v in caps.items() if v[0] == day}
        if caps:
            new["c"] = caps
        top = self._contributions(slot, ctx, best, total, new["t"]) if matched else (slot or {}).get("x")
        if top:
            new["x"] = top
        firings = [
            self._firing(ctx, threshold, previous, value, stage, new)
            for threshold in self.thresholds
            if matched and previous < threshold.at <= value
        ]
        change = None
        if stage is not None and stage != old_stage:
            change = StageChange(rule.id, old_stage, stage, reason, t, ctx.event.message_id, value)
            firings.extend(self._stage_firing(change, spec, new) for name, spec in self.on_stage if name == stage)
        return new, firings, change

    def _stage_firing(self, change: StageChange, spec: ActionSpec, slot: Any) -> Firing:
        return Firing(
            at_ms=change.at_ms,
            key=f"stage:{change.new}:{change.at_ms}:{change.message_id}",
            trigger=(change.message_id,),
            trigger_time_ms=change.at_ms,
            explanation=f"lead moved from {change.old or 'no stage'} to {change.new}: {change.reason}"
            + self.explain_top(slot, change.at_ms),
            action=spec,
            details={"stage_change": {"from": change.old, "to": change.new, "reason": change.reason}},
        )

    def _event_moves(
        self, moves: list[StageOn], ctx: MatchContext, stage: str | None, reason: str
    ) -> tuple[str | None, str]:
        ladder = self.ladder
        label = ctx.event.name or ctx.event.type
        for entry in moves:
            if entry.stage == stage:
                continue
            if entry.allow_backward or ladder.rank(entry.stage) > ladder.rank(stage):
                stage = entry.stage
                reason = f"event '{label}' (message {ctx.event.message_id}) moves the lead to {entry.stage}"
        return stage, reason

    def explain_top(self, slot: Any, now_ms: int, limit: int = 3) -> str:
        parts = [
            f"{item['matcher'] or 'an event'} {item['points']:+g} (message {item['message_id']})"
            for item in self.top(slot, now_ms)[:limit]
        ]
        return "; top contributions: " + ", ".join(parts) if parts else ""

    def _firing(
        self,
        ctx: MatchContext,
        threshold: ScoreThreshold,
        previous: float,
        value: float,
        stage: str | None,
        slot: Any,
    ) -> Firing:
        event = ctx.event
        label = event.name or event.type
        text = (
            f"score rose from {round(previous, 2):g} to {round(value, 2):g} on '{label}' "
            f"(message {event.message_id}), "
            f"crossing {threshold.name} at {threshold.at:g}"
        ) + self.explain_top(slot, event.timestamp_ms)
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
        merged: dict[str, Any] = {"v": value, "t": t}
        ladder = self.ladder
        known = [s for s in (mine.get("s"), other.get("s")) if ladder.rank(s) >= 0]
        current = max(known, key=ladder.rank) if known else None
        stage, _ = ladder.by_score(current, -math.inf, value)
        if stage is not None:
            merged["s"] = stage
        rebased = [
            [m, i, p, age + (t - part["t"]) // 1000] for part in (mine, other) for m, i, p, age in part.get("x", ())
        ]
        top = sorted(rebased, key=self._weight, reverse=True)[:TOP]
        if top:
            merged["x"] = top
        return merged
