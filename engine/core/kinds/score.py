"""`kind: score` — lead scoring: points per matcher, daily caps, half-life decay, thresholds, stages, reasons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from engine.core.kinds import EventDriven
from engine.core.predicates import MatchContext, Matcher
from engine.core.ruleset import ActionSpec, Firing, Rule, Slot
from engine.core.stages import StageChange, StageLadder, StageOn

DAY_MS = 86_400_000
TOP = 3  # contributions kept per lead for explanations (state must stay under 1 KiB per lead)
MAX_ID = 17  # characters of a message id kept in state


# The entries repeated inside the slot are plain typed tuples (see `Slot` in engine/core/ruleset.py).
# One of the `TOP` events that contributed most to the score now: (message id, at most MAX_ID characters; index of
# the points entry that matched, the largest one when several did; the event's points, after daily caps; its
# event time in seconds before the slot's at_ms).
Contribution: TypeAlias = tuple[str, int, float, int]
# Points a capped entry has used on one UTC day of event time: (entry index, day number, points used).
DailyCap: TypeAlias = tuple[int, int, float]


class ScoreSlot(NamedTuple):
    """Stored as `[value, at_ms, stage, [contribution, ...], [daily cap, ...]]`.

    Before slots were typed a score slot was stored as `{"v", "t", "s", "c": {entry: [day, used]}, "x"}`;
    `ScoreLogic.load` reads that too (leads whose state was written by an older worker).
    """

    value: float  # the score at at_ms (decay is applied on read)
    at_ms: int
    stage: str | None = None
    top: tuple[Contribution, ...] = ()  # largest current value first
    caps: tuple[DailyCap, ...] = ()  # only those of the day of the last matching event


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


def _clean(value: float) -> float:
    """Rounded to 4 decimals, and an int when whole (state stays short: `10`, not `10.0`)."""
    rounded = round(value, 4)
    return int(rounded) if rounded == int(rounded) else rounded


@dataclass(frozen=True, slots=True)
class ScoreLogic(EventDriven):
    """Points, daily caps, decay, thresholds and stages.

    Semantics:
    - At each event, every `points` entry whose matcher matches adds its points (negative points subtract). With
      `daily_cap`, the absolute points one entry can add per UTC day (event time) are capped.
    - With `half_life`, the score decays continuously: value(t) = value(t0) * 2^(-(t - t0) / half_life). Decay is
      computed on read, so it needs no deadline.
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
      times are stored as seconds before the slot's `at_ms`.
    Slot: a `ScoreSlot`, or none before the first points or stage move.
    """

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

    def load(self, slot: Slot | None) -> ScoreSlot | None:
        if slot is None or type(slot) is ScoreSlot:
            return slot
        if type(slot) is list and len(slot) == len(ScoreSlot._fields):
            value, at_ms, stage, top, caps = slot
            return ScoreSlot(value, at_ms, stage, tuple(map(tuple, top)), tuple(map(tuple, caps)))
        if type(slot) is dict:  # the format before typed slots
            return ScoreSlot(
                slot["v"],
                slot["t"],
                slot.get("s"),
                tuple(map(tuple, slot.get("x", ()))),
                tuple((int(entry), day, used) for entry, (day, used) in slot.get("c", {}).items()),
            )
        raise ValueError(f"not a score slot: {slot!r}")

    def _stage_moves(self, ctx: MatchContext) -> list[StageOn]:
        if not self.stage_on:
            return []
        names, event = self.stage_on_names, ctx.event
        if names is not None and (event.type != "track" or event.name not in names):
            return []  # cheap pre-filter: this runs on every event the score rule sees
        return [entry for entry in self.stage_on if entry.match(ctx)]

    def value_at(self, slot: ScoreSlot | None, now_ms: int) -> float:
        if slot is None:
            return 0
        value, t = slot.value, slot.at_ms
        if self.half_life_ms and now_ms > t and value:
            return _clean(value * 2.0 ** (-(now_ms - t) / self.half_life_ms))
        return value

    def stage_of(self, slot: ScoreSlot | None) -> str | None:
        return None if slot is None else slot.stage

    def _decayed(self, points: float, t: int, now_ms: int) -> float:
        if self.half_life_ms and now_ms > t:
            return _clean(points * 2.0 ** (-(now_ms - t) / self.half_life_ms))
        return points

    def _weight(self, entry: Contribution) -> tuple[float, float]:
        points, t = entry[2], -entry[3]  # ranked within one slot: seconds before at_ms, negated, like times
        if not points:
            return (-math.inf, t)
        if self.half_life_ms:
            return (math.log2(abs(points)) + t * 1000 / self.half_life_ms, t)
        return (abs(points), t)

    def top(self, slot: ScoreSlot | None, now_ms: int) -> list[dict[str, Any]]:
        """The kept contributions, largest first, as the lead view and templates show them."""
        if slot is None:
            return []
        out = []
        for message_id, index, points, age_s in slot.top:
            t = slot.at_ms - age_s * 1000
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

    def _contributions(
        self, slot: ScoreSlot | None, ctx: MatchContext, index: int, points: float, t: int
    ) -> tuple[Contribution, ...]:
        """The kept contributions plus this event's, re-based on the new slot time `t`."""
        if slot is None:
            kept = []
        else:
            shift = (t - slot.at_ms) // 1000
            kept = [(m, i, p, age + shift) for m, i, p, age in slot.top] if shift else list(slot.top)
        if points:
            event = ctx.event
            message_id = event.message_id
            if len(message_id) > MAX_ID:
                message_id = "~" + message_id[1 - MAX_ID :]
            kept.append((message_id, index, _clean(points), (t - event.timestamp_ms) // 1000))
            kept.sort(key=self._weight, reverse=True)
        return tuple(kept[:TOP])

    def on_event(self, rule: Rule, slot: Slot | None, ctx: MatchContext) -> tuple[ScoreSlot | None, list[Firing]]:
        new, firings, _ = self.step(rule, slot, ctx)
        return new, firings

    def step(
        self, rule: Rule, slot: Slot | None, ctx: MatchContext
    ) -> tuple[ScoreSlot | None, list[Firing], StageChange | None]:
        """`on_event`, and the stage change the event caused (for `evaluate` to publish), if any."""
        old = None if slot is None else slot if type(slot) is ScoreSlot else self.load(slot)  # (no call: hot path)
        t = ctx.event.timestamp_ms
        day = t // DAY_MS
        caps: dict[int, DailyCap] | None = None  # copied from the slot on first use
        total = 0.0
        matched = False
        best, best_points = -1, 0.0
        for index, entry in enumerate(self.points):
            if not entry.match(ctx):
                continue
            matched = True
            points = entry.points
            if entry.daily_cap is not None:
                if caps is None:
                    caps = {} if old is None else {cap[0]: cap for cap in old.caps}
                cap = caps.get(index)
                used = cap[2] if cap is not None and cap[1] == day else 0
                room = max(0.0, entry.daily_cap - used)
                points = min(points, room) if points >= 0 else max(points, -room)
                caps[index] = (index, day, _clean(used + abs(points)))
            total += points
            if best < 0 or abs(points) > abs(best_points):
                best, best_points = index, points
        moves = self._stage_moves(ctx)
        if not matched and not moves:
            return old, [], None
        old_stage = self.stage_of(old)
        previous = self.value_at(old, t)
        if matched:
            value = _clean(previous + total)
            stored, at_ms = value, (t if old is None else max(t, old.at_ms))
            top = self._contributions(old, ctx, best, total, at_ms)
        else:  # a stage move alone: the stored value and its time stay (decay is applied on read)
            value = previous
            stored, at_ms = (0, t) if old is None else (old.value, old.at_ms)
            top = () if old is None else old.top
        stage, reached = self.ladder.by_score(old_stage, previous, value)
        reason = f"score {round(value, 2):g} reached {stage} at {reached:g}" if reached is not None else ""
        stage, reason = self._event_moves(moves, ctx, stage, reason)
        kept_caps = caps.values() if caps is not None else () if old is None else old.caps
        new = ScoreSlot(stored, at_ms, stage, top, tuple([cap for cap in kept_caps if cap[1] == day]))
        firings = [
            self._firing(ctx, threshold, previous, value, stage, new)
            for threshold in self.thresholds
            if matched and previous < threshold.at <= value
        ]
        change = None
        if stage is not None and stage != old_stage:
            change = StageChange(
                rule.id, old_stage, stage, reason, t, ctx.event.message_id, value, ctx.event.trusted
            )
            firings.extend(self._stage_firing(change, spec, new) for name, spec in self.on_stage if name == stage)
        return new, firings, change

    def _stage_firing(self, change: StageChange, spec: ActionSpec, slot: ScoreSlot) -> Firing:
        return Firing.at_event(
            change.at_ms,
            f"stage:{change.new}:{change.at_ms}:{change.message_id}",
            (change.message_id,),
            f"lead moved from {change.old or 'no stage'} to {change.new}: {change.reason}"
            + self.explain_top(slot, change.at_ms),
            {"stage_change": {"from": change.old, "to": change.new, "reason": change.reason}},
            action=spec,
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

    def explain_top(self, slot: ScoreSlot | None, now_ms: int, limit: int = 3) -> str:
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
        slot: ScoreSlot,
    ) -> Firing:
        event = ctx.event
        label = event.name or event.type
        text = (
            f"score rose from {round(previous, 2):g} to {round(value, 2):g} on '{label}' "
            f"(message {event.message_id}), "
            f"crossing {threshold.name} at {threshold.at:g}"
        ) + self.explain_top(slot, event.timestamp_ms)
        return Firing.at_event(
            event.timestamp_ms,
            f"{threshold.name}:{event.timestamp_ms}:{event.message_id}",
            (event.message_id,),
            text,
            action=threshold.action,
            details={
                "threshold": threshold.name,
                "at": threshold.at,
                "score": value,
                "previous": previous,
                "stage": stage,
            },
        )

    @property
    def shape(self) -> str:
        return "score"

    def merge(self, mine: Slot | None, other: Slot | None) -> ScoreSlot | None:
        """Scores add up (both decayed to the later time), the higher known stage stays (then the sum may lift
        it), the best contributions of both are kept; daily caps start afresh."""
        a, b = self.load(mine), self.load(other)
        if a is None or b is None:
            return a if b is None else b
        t = max(a.at_ms, b.at_ms)
        value = _clean(self.value_at(a, t) + self.value_at(b, t))
        ladder = self.ladder
        known = [s for s in (a.stage, b.stage) if ladder.rank(s) >= 0]
        current = max(known, key=ladder.rank) if known else None
        stage, _ = ladder.by_score(current, -math.inf, value)
        rebased = [(m, i, p, age + (t - part.at_ms) // 1000) for part in (a, b) for m, i, p, age in part.top]
        top = tuple(sorted(rebased, key=self._weight, reverse=True)[:TOP])
        return ScoreSlot(value, t, stage, top)
