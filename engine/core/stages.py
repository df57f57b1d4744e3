"""Lifecycle stages of a lead (subscriber → lead → mql → sql → opportunity → customer) and the `Stage Changed`
event every stage change produces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from engine.core.predicates import Matcher
from engine.events import Event

STAGE_CHANGED = "Stage Changed"
MAX_STAGE_EVENTS = 4  # synthetic events per evaluation: a stage rule reacting to stage changes cannot loop


@dataclass(frozen=True, slots=True)
class StageOn:
    """`stage_on:` entry: an event matching `match` moves the lead to `stage`."""

    match: Matcher
    stage: str
    allow_backward: bool = False
    text: str = ""  # the matcher described, for the reason


@dataclass(frozen=True, slots=True)
class StageLadder:
    """The ordered stage names of one score rule (`stages:`), each with the minimum score that reaches it, or
    None for a stage only events reach (`opportunity`, `customer`).

    Score moves (`by_score`) are forward-only and need the score to *cross* a stage's minimum upwards in this
    step (previous < minimum <= new score); a lead without a stage yet takes the highest stage its score meets.
    So a lead never regresses on decay, and after an explicit backward move the score moves it forward again
    only on new evidence, never merely because an old score still sits above a minimum. Event moves
    (`stage_on:` entries, applied by the score kind) go forward, or to any stage when the entry says
    `allow_backward: true`; when several entries match one event, the last one listed wins.
    """

    stages: tuple[tuple[str, float | None], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.stages)

    def rank(self, name: str | None) -> int:
        for index, (stage, _) in enumerate(self.stages):
            if stage == name:
                return index
        return -1

    def by_score(self, current: str | None, previous: float, value: float) -> tuple[str | None, float | None]:
        """The stage after a score move from `previous` to `value`, and the minimum that moved it (None: no move)."""
        rank, reached = self.rank(current), None
        for index, (name, at) in enumerate(self.stages):
            if at is None or index <= rank or value < at:
                continue
            if current is None or previous < at:
                current, rank, reached = name, index, at
        return current, reached

    def higher(self, a: str | None, b: str | None) -> str | None:
        return a if self.rank(a) >= self.rank(b) else b


@dataclass(frozen=True, slots=True)
class StageChange:
    """One stage move of one lead, caused by the event `message_id` at `at_ms`.

    `event()` is the synthetic Segment `track` event `Stage Changed` (properties `from`, `to`, `rule`, `reason`,
    `score`, `trigger`; its message id derives from the triggering one, so a replay produces the same id) that
    the lead's other rules see in the same evaluation, as trusted as the event that caused the change (so a
    `trusted: true` matcher on `Stage Changed` cannot be reached from untrusted events); `update()` is the
    `lead-updates` record.
    """

    rule: str
    old: str | None
    new: str
    reason: str
    at_ms: int
    message_id: str
    score: float | int
    trusted: bool = True  # the triggering event's `Event.trusted`: a visitor's event cannot make a trusted change

    def synthetic_id(self) -> str:
        digest = hashlib.blake2b(f"{self.message_id}|{self.rule}|{self.new}".encode(), digest_size=8).hexdigest()
        return f"stage-{digest}"

    def event(self, lead_id: str) -> Event:
        return Event(
            message_id=self.synthetic_id(),
            lead_id=lead_id,
            type="track",
            timestamp_ms=self.at_ms,
            name=STAGE_CHANGED,
            user_id=lead_id,
            properties={
                "from": self.old,
                "to": self.new,
                "rule": self.rule,
                "reason": self.reason,
                "score": self.score,
                "trigger": self.message_id,
            },
            trusted=self.trusted,
        )

    def update(self, lead_id: str) -> dict[str, Any]:
        """The `lead-updates` record (engine/clickhouse/rows.py stores it: lead_id, at_ms, kind, payload)."""
        return {
            "kind": "stage_changed",
            "lead_id": lead_id,
            "at_ms": self.at_ms,
            "from": self.old,
            "to": self.new,
            "stage": self.new,
            "score": self.score,
            "rule": self.rule,
            "reason": self.reason,
            "trigger": self.message_id,
            "message_id": self.synthetic_id(),
        }
