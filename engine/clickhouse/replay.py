"""Dry run of a rule set over stored history, compared with what actually fired. Nothing is sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from engine.clickhouse.history import EventReader, fired_actions
from engine.core import RuleSet, simulate
from engine.core.model import Action


@dataclass
class RuleComparison:
    rule: str
    would_fire: int = 0
    fired: int = 0
    matched: int = 0  # same action id in both
    only_replay: int = 0
    only_live: int = 0
    pending: int = 0  # replay fires it after the horizon (live watermark not there yet)


@dataclass
class ReplayResult:
    events: int
    skipped_events: int
    rules: list[RuleComparison]
    would_fire: list[Action]

    @property
    def identical(self) -> bool:
        return all(r.only_replay == 0 and r.only_live == 0 for r in self.rules)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "skipped_events": self.skipped_events,
            "identical": self.identical,
            "rules": [asdict(r) for r in self.rules],
        }


def replay(client: Client, rules: RuleSet, since_ms: int, until_ms: int, horizon_ms: int) -> ReplayResult:
    """Per rule, the actions `rules` would fire inside the window next to the actions stored as fired there.

    Takes every lead that had an event or a fired action in the window and reads its whole stored history up to
    `until_ms` (so lead state, i.e. sequences, scores, cooldowns and pending deadlines, is rebuilt as the live
    worker had it), runs the live worker's pure core (`engine.core.simulate`, deadlines flushed) and matches by
    action id (deterministic: rule, rule version, lead, trigger). Actions the replay fires after `horizon_ms`
    (deadlines the live watermark cannot have reached yet: now minus the allowed lateness) count as `pending`,
    not as differences. Read-only; nothing is sent.

    Known limits: history older than the events table's TTL is gone; a lead with neither events nor live actions
    in the window is not replayed (a new rule's long deadline for it would be missed); and a changed rule has a
    new version, so its action ids differ from the live ones by design (compare the counts then).
    """
    reader = EventReader(client)
    events = list(reader.events(since_ms, until_ms))
    # Whole histories rebuild each lead's state; only what fires inside the window is compared.
    would = [a for a in simulate(rules, events, flush=True) if a.fired_at_ms >= since_ms]
    actual = fired_actions(client, since_ms, until_ms)
    per_rule: dict[str, RuleComparison] = {}

    def entry(rule: str) -> RuleComparison:
        return per_rule.setdefault(rule, RuleComparison(rule))

    live_ids = {a.action_id for a in actual}
    due = []
    for action in would:
        if action.fired_at_ms > horizon_ms:
            entry(action.rule).pending += 1
            continue
        due.append(action)
        e = entry(action.rule)
        e.would_fire += 1
        if action.action_id in live_ids:
            e.matched += 1
        else:
            e.only_replay += 1
    replay_ids = {a.action_id for a in would}
    for fired in actual:
        e = entry(fired.rule)
        e.fired += 1
        if fired.action_id not in replay_ids:
            e.only_live += 1
    return ReplayResult(len(events), reader.skipped, [per_rule[r] for r in sorted(per_rule)], due)
