"""`evaluate(rules, state, event | tick, now)`: the one implementation of rule semantics (worker + simulator).

Contract:
- Pure: no I/O, no clock, no randomness; the same inputs give equal outputs; the input state is not mutated
  (unless the caller hands it over with `reuse_state=True`).
- On an `Event` at t: first fire the deadlines < t (the lead's own event proves event time passed them;
  fired_at is the deadline), then update the derived facts, then let every enabled rule see the event (in
  rule-set order), then, when `now_ms` is given, fire the deadlines <= now_ms.
- On a `Tick(now)`: fire the deadlines <= now, earliest first (ties: rule-set order).
- Every firing passes the common gates, in this order: cooldown (since this rule last fired for this lead),
  `max_per_lead` (fires per UTC day of event time), `if:` (over the lead view at firing time). A gated firing
  is dropped (and not remembered); the kind's own state moves on regardless (an absence episode still closes).
- `Evaluation.deadlines` lists ALL pending deadlines of the lead after this step, sorted, deduplicated.
- Slots of rules that are no longer in the rule set (or disabled) are dropped, so state cannot outlive its
  rules.
- Stage changes (score rules, see `engine.core.stages`): each one is listed in `Evaluation.updates` (the
  `lead-updates` record) and, in the same step, the synthetic `track` event `Stage Changed` is shown to the
  lead's other rules (not to the rule that made the change; facts are not updated by it). At most
  `MAX_STAGE_EVENTS` synthetic events per step, so rules reacting to stage changes cannot loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.core.facts import LeadView, apply_event, lead_view
from engine.core.model import Action, Tick, make_action_id
from engine.core.ruleset import Firing, Rule, RuleSet
from engine.core.stages import MAX_STAGE_EVENTS, StageChange
from engine.core.state import LeadState
from engine.events import Event

DAY_MS = 86_400_000


@dataclass(slots=True)
class Evaluation:
    """One step's result: the lead's new state, the actions fired (in firing order), all pending deadlines,
    and the lead updates to publish on `lead-updates` (stage changes, in order)."""

    state: LeadState
    actions: list[Action] = field(default_factory=list)
    deadlines: list[int] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


def build_view(rules: RuleSet, state: LeadState, now_ms: int) -> LeadView:
    scores: dict[str, float] = {}
    stages: dict[str, str | None] = {}
    primary = None
    top: list[dict[str, Any]] = []
    for rule in rules.score_rules:
        slot = state.rules.get(rule.key)
        value = round(rule.logic.value_at(slot, now_ms), 2)  # type: ignore[attr-defined]
        scores[rule.id] = int(value) if value == int(value) else value  # the view shows 2 decimals
        stages[rule.id] = rule.logic.stage_of(slot)  # type: ignore[attr-defined]
        if primary is None:
            primary = rule.id
            top = rule.logic.top(slot, now_ms)  # type: ignore[attr-defined]
    return lead_view(state.lead_id, state.facts, scores, stages, primary, top)


class _EventContext:
    """What matchers see for one event: the event, its document and the lead view, each built at most once."""

    __slots__ = ("_doc", "_lead", "event", "rules", "state")

    def __init__(self, event: Event, state: LeadState, rules: RuleSet) -> None:
        self.event = event
        self.state = state
        self.rules = rules
        self._doc: dict[str, Any] | None = None
        self._lead: LeadView | None = None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = self.event.document()
        return self._doc

    @property
    def lead(self) -> LeadView:
        if self._lead is None:
            self._lead = build_view(self.rules, self.state, self.event.timestamp_ms)
        return self._lead

    def lead_changed(self) -> None:
        self._lead = None


def _emit(rule: Rule, state: LeadState, firing: Firing, view: LeadView, actions: list[Action]) -> None:
    at = firing.at_ms
    gate = state.gates.get(rule.key)  # [last fired at, fires on that UTC day]
    same_day = gate is not None and gate[0] // DAY_MS == at // DAY_MS
    if gate is not None and rule.cooldown_ms and at - gate[0] < rule.cooldown_ms:
        return
    if same_day and rule.max_per_lead is not None and gate[1] >= rule.max_per_lead:
        return
    if not rule.condition_holds(view):
        return
    state.gates[rule.key] = [at, gate[1] + 1 if same_day else 1]
    spec = firing.action or rule.action
    context = dict(view)
    if firing.details:
        context["trigger"] = firing.details
    actions.append(
        Action(
            action_id=make_action_id(rule.id, rule.version, state.lead_id, firing.key),
            rule=rule.id,
            rule_version=rule.version,
            lead_id=state.lead_id,
            fired_at_ms=at,
            trigger=firing.trigger,
            connector=spec.connector,
            explanation=firing.explanation,
            template=spec.template,
            payload=dict(spec.payload),
            priority=rule.priority,
            marketing=rule.marketing,
            on_cap=rule.on_cap,
            context=context,
            trigger_time_ms=firing.trigger_time_ms,
        )
    )


def _store(state: LeadState, rule: Rule, slot: Any) -> None:
    if slot is None:
        state.rules.pop(rule.key, None)
    else:
        state.rules[rule.key] = slot


def _fire_due(rules: RuleSet, state: LeadState, t: int, inclusive: bool, actions: list[Action]) -> None:
    while state.rules:
        due: tuple[int, int, Rule] | None = None
        for key, slot in state.rules.items():
            rule = rules.by_key[key]
            deadline = rule.logic.deadline(slot)
            if deadline is None or deadline > t or (deadline == t and not inclusive):
                continue
            candidate = (deadline, rules.order[key], rule)
            if due is None or candidate[:2] < due[:2]:
                due = candidate
        if due is None:
            return
        deadline, _, rule = due
        slot, firings = rule.logic.on_deadline(rule, state.rules[rule.key], deadline)
        _store(state, rule, slot)
        if firings:
            view = build_view(rules, state, deadline)
            for firing in firings:
                _emit(rule, state, firing, view, actions)


def _show_event(
    rules: RuleSet,
    state: LeadState,
    event: Event,
    actions: list[Action],
    changes: list[tuple[Rule, StageChange]],
    skip: Rule | None = None,
) -> None:
    ctx = _EventContext(event, state, rules)
    for rule in rules.for_event(event.type, event.name):
        if rule is skip:
            continue
        slot = state.rules.get(rule.key)
        if slot is not None and rule.exit_on is not None and rule.exit_on(ctx):
            slot = None
        if rule.kind == "score":
            new_slot, firings, change = rule.logic.step(rule, slot, ctx)  # type: ignore[attr-defined]
            if change is not None:
                changes.append((rule, change))
        else:
            new_slot, firings = rule.logic.on_event(rule, slot, ctx)
        _store(state, rule, new_slot)
        if rule.kind == "score" and new_slot is not slot:
            ctx.lead_changed()
        for firing in firings:
            _emit(rule, state, firing, ctx.lead, actions)


def _apply_event(
    rules: RuleSet, state: LeadState, event: Event, actions: list[Action], updates: list[dict[str, Any]]
) -> None:
    apply_event(state.facts, event)
    changes: list[tuple[Rule, StageChange]] = []
    _show_event(rules, state, event, actions, changes)
    shown = 0
    while changes:  # breadth first: stage changes in the order they happened
        rule, change = changes.pop(0)
        updates.append(change.update(state.lead_id))
        if shown < MAX_STAGE_EVENTS:
            shown += 1
            _show_event(rules, state, change.event(state.lead_id), actions, changes, skip=rule)


def pending_deadlines(rules: RuleSet, state: LeadState) -> list[int]:
    deadlines = set()
    for key, slot in state.rules.items():
        rule = rules.by_key.get(key)
        if rule is not None and rule.enabled:
            deadline = rule.logic.deadline(slot)
            if deadline is not None:
                deadlines.add(deadline)
    return sorted(deadlines)


def _drop_stale_slots(rules: RuleSet, state: LeadState) -> None:
    for key in [k for k in state.rules if (r := rules.by_key.get(k)) is None or not r.enabled]:
        del state.rules[key]


def _drop_spent_gates(rules: RuleSet, state: LeadState, now_ms: int) -> None:
    """A gate is kept only while it can still block a firing (cooldown running, or fires counted today)."""
    for key in list(state.gates):
        rule = rules.by_key.get(key)
        last = state.gates[key][0]
        cooling = rule is not None and rule.cooldown_ms and now_ms - last < rule.cooldown_ms
        capped = rule is not None and rule.max_per_lead is not None and last // DAY_MS == now_ms // DAY_MS
        if not (cooling or capped):
            del state.gates[key]


def evaluate(
    rules: RuleSet,
    state: LeadState | None,
    item: Event | Tick,
    now_ms: int | None = None,
    *,
    reuse_state: bool = False,
) -> Evaluation:
    """One step for one lead. With `reuse_state=True` the caller hands `state` over: it is updated in place
    and returned, saving a deep copy per step. By default `state` is left untouched."""
    if state is None:
        work = LeadState()
    elif reuse_state:
        work = state
    else:
        work = state.copy()
    _drop_stale_slots(rules, work)
    actions: list[Action] = []
    updates: list[dict[str, Any]] = []
    if isinstance(item, Tick):
        _fire_due(rules, work, item.now_ms, True, actions)
        _drop_spent_gates(rules, work, item.now_ms)
    else:
        if not work.lead_id:
            work.lead_id = item.lead_id
        _fire_due(rules, work, item.timestamp_ms, False, actions)
        _apply_event(rules, work, item, actions, updates)
        if now_ms is not None:
            _fire_due(rules, work, now_ms, True, actions)
        _drop_spent_gates(rules, work, max(item.timestamp_ms, now_ms or 0))
    return Evaluation(work, actions, pending_deadlines(rules, work), updates)
