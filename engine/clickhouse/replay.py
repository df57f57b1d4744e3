"""Dry run of a rule set over stored history, compared with what actually fired. Nothing is sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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


EXAMPLE_LEADS = 3


@dataclass
class RuleDiff:
    """One rule's actions over the window under the deployed rules (`before`) and the new ones (`after`)."""

    rule: str
    status: str  # unchanged | changed | new | removed (by rule version)
    before: int = 0
    after: int = 0
    added: int = 0  # fired by the new rules only
    removed: int = 0  # fired by the deployed rules only
    added_leads: list[str] = field(default_factory=list)  # a few examples
    removed_leads: list[str] = field(default_factory=list)


@dataclass
class RulesDiff:
    events: int
    skipped_events: int
    rules: list[RuleDiff]

    @property
    def changes(self) -> bool:
        return any(r.added or r.removed for r in self.rules)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "skipped_events": self.skipped_events,
            "changes": self.changes,
            "rules": [asdict(r) for r in self.rules],
        }


def _what(action: Action) -> tuple[Any, ...]:
    """An action without its rule version: the same firing of an edited rule matches (its action id does not)."""
    return (action.rule, action.lead_id, action.fired_at_ms, action.trigger, action.step)


def diff(client: Client, before: RuleSet, after: RuleSet, since_ms: int, until_ms: int) -> RulesDiff:
    """`nudge rules diff`: per rule, the actions `after` would fire in the window that `before` would not, and the
    other way round, both dry runs of the same stored history (read as `replay` reads it: whole histories of the
    leads active in the window, deadlines flushed; only actions fired inside [since, until] count). Firings are
    matched by rule, lead, fire time, trigger and journey step (not by action id, which changes with the rule
    version). Read-only; nothing is sent."""
    reader = EventReader(client)
    events = list(reader.events(since_ms, until_ms))

    def run(rules: RuleSet) -> dict[tuple[Any, ...], Action]:
        return {_what(a): a for a in simulate(rules, events, flush=True) if since_ms <= a.fired_at_ms <= until_ms}

    old, new = run(before), run(after)
    per_rule: dict[str, RuleDiff] = {}
    for rule in {r.id for r in before.rules} | {r.id for r in after.rules}:
        was, now = before.get(rule), after.get(rule)
        status = "new" if was is None else "removed" if now is None else (
            "unchanged" if was.version == now.version and was.enabled == now.enabled else "changed"
        )
        per_rule[rule] = RuleDiff(rule, status)
    for key, action in old.items():
        entry = per_rule.setdefault(action.rule, RuleDiff(action.rule, "removed"))
        entry.before += 1
        if key not in new:
            entry.removed += 1
            if action.lead_id not in entry.removed_leads and len(entry.removed_leads) < EXAMPLE_LEADS:
                entry.removed_leads.append(action.lead_id)
    for key, action in new.items():
        entry = per_rule.setdefault(action.rule, RuleDiff(action.rule, "new"))
        entry.after += 1
        if key not in old:
            entry.added += 1
            if action.lead_id not in entry.added_leads and len(entry.added_leads) < EXAMPLE_LEADS:
                entry.added_leads.append(action.lead_id)
    return RulesDiff(len(events), reader.skipped, [per_rule[r] for r in sorted(per_rule)])
