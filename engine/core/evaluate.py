"""`evaluate(rules, state, event | tick, now)`: the one implementation of rule semantics, used by the worker,
`nudge simulate` and `nudge replay`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.core.consent import withdrawal_reason
from engine.core.experiments import HOLDOUT, Experiment, goal_value
from engine.core.experiments import record as experiment_record
from engine.core.facts import LeadView, apply_event, lead_view
from engine.core.kinds.journey import ASSIGNED, JourneyLogic, Record
from engine.core.kinds.score import ScoreLogic, ScoreSlot
from engine.core.model import Action, Tick, make_action_id
from engine.core.ruleset import ActionSpec, Firing, Rule, RuleSet, Slot
from engine.core.stages import MAX_STAGE_EVENTS, StageChange
from engine.core.state import LeadState
from engine.events import Event

DAY_MS = 86_400_000
UNSUBSCRIBED_EVENT = "Unsubscribed"  # the track event the collector's unsubscribe endpoint records
EMPTY: dict[str, Any] = {}


@dataclass(slots=True)
class Evaluation:
    """One step's result: the lead's new state, the actions fired (in firing order), the lead updates to publish
    on `lead-updates` (in order: consent and stage changes, conversions, and journey records — `kind: journey`,
    see `engine.core.kinds.journey.Record` — and experiment records, `kind: experiment`: goals as their events come,
    then the step's assignments; see `engine.core.experiments.record`), and `deadlines`: ALL pending deadlines of
    the lead after this step, sorted and deduplicated (not a delta, so the shell replaces its index entry for the
    lead)."""

    state: LeadState
    actions: list[Action] = field(default_factory=list)
    deadlines: list[int] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    # Firings a common gate stopped: (rule id, `cooldown` | `max_per_lead` | `condition`), in order.
    suppressed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Fired:
    """What one step fires, the firings its gates stop, and the experiment assignments its firings make."""

    actions: list[Action] = field(default_factory=list)
    suppressed: list[tuple[str, str]] = field(default_factory=list)
    assigned: list[dict[str, Any]] = field(default_factory=list)


def build_view(rules: RuleSet, state: LeadState, now_ms: int) -> LeadView:
    """The lead as `if:` conditions, `lead.` paths and action contexts see it at `now_ms` (scores decayed to it);
    the first score rule of the set is the lead's primary `score`/`stage`."""
    scores: dict[str, float] = {}
    stages: dict[str, str | None] = {}
    primary = None
    top: list[dict[str, Any]] = []
    for rule in rules.score_rules:
        logic = rule.logic
        if type(logic) is not ScoreLogic:
            continue
        stored = state.rules.get(rule.key)
        slot = None if stored is None else stored if type(stored) is ScoreSlot else logic.load(stored)
        value = round(logic.value_at(slot, now_ms), 2)
        scores[rule.id] = int(value) if value == int(value) else value  # the view shows 2 decimals
        stages[rule.id] = logic.stage_of(slot)
        if primary is None:
            primary = rule.id
            top = logic.top(slot, now_ms)
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


def _emit(rule: Rule, state: LeadState, firing: Firing, view: LeadView, out: _Fired) -> None:
    at = firing.at_ms
    if firing.step is None:  # a journey's send passes no gate: its `if:` applied at entry
        fires = 0  # this rule's fires for this lead so far: ever, or in the current `per` period
        gate = state.gates.get(rule.key)  # [last fired at, fires counted]
        if gate is not None:
            last_ms, counted = gate
            if rule.cooldown_ms and at - last_ms < rule.cooldown_ms:
                out.suppressed.append((rule.id, "cooldown"))
                return
            if rule.per_ms is None or last_ms // rule.per_ms == at // rule.per_ms:
                fires = counted
        if rule.max_per_lead is not None and fires >= rule.max_per_lead:
            out.suppressed.append((rule.id, "max_per_lead"))
            return
        if not rule.condition_holds(view):
            out.suppressed.append((rule.id, "condition"))
            return
        state.gates[rule.key] = [at, fires + 1]
    spec = firing.action or rule.action
    experiment, arm = firing.experiment, firing.arm
    if firing.step is not None and experiment is None and rule.experiments:
        experiment, arm = _arm_in_journey(state, rule, firing)
    elif firing.step is None and rule.experiment is not None:
        experiment = rule.experiment
        arm = experiment.arm(state.lead_id)
        assign(state, rule, experiment, arm, at, firing.trigger[-1] if firing.trigger else None, out.assigned)
        variant = experiment.variant(arm)
        if variant is not None and variant.action:
            spec = _merged(spec, variant.action)
    context = dict(view)
    if firing.details:
        context["trigger"] = firing.details
    out.actions.append(
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
            marketing=rule.marketing if firing.marketing is None else firing.marketing,
            on_cap=rule.on_cap,
            context=context,
            trigger_time_ms=firing.trigger_time_ms,
            expires_at_ms=at + rule.expires_after_ms if rule.expires_after_ms is not None else None,
            step=firing.step,
            experiment=None if experiment is None else experiment.id,
            variant=arm,
            held_out=arm == HOLDOUT,
        )
    )


def _arm_in_journey(state: LeadState, rule: Rule, firing: Firing) -> tuple[Experiment | None, str | None]:
    """A journey send's experiment and arm: the latest split of this journey the lead passed since it entered
    (from its experiment memory); (None, None) when it has passed none."""
    entered = (firing.details or EMPTY).get("entered_at", firing.at_ms)
    best: tuple[Experiment, list[Any]] | None = None
    for experiment in rule.experiments:
        entry = state.experiments.get(experiment.key)
        if entry is not None and entry[-1] >= entered and (best is None or entry[-1] >= best[1][-1]):
            best = (experiment, entry)
    return (None, None) if best is None else (best[0], str(best[1][0]))


def _merged(spec: ActionSpec, keys: Any) -> ActionSpec:
    """A variant's `action:` keys over the rule's action: connector and template replace, payload keys merge."""
    payload = dict(spec.payload)
    payload.update(keys.get("payload") or {})
    return ActionSpec(keys.get("connector") or spec.connector, keys.get("template", spec.template), payload)


def assign(
    state: LeadState,
    rule: Rule,
    experiment: Experiment,
    arm: str,
    at_ms: int,
    message_id: str | None,
    updates: list[dict[str, Any]],
    split: bool = False,
) -> None:
    """The lead meets `experiment` at `at_ms` in `arm`: remembered (for goal events) as `[arm, at_ms]` and reported
    as `assigned`, unless an assignment of this experiment is still within its goal window (then only a journey
    split's entry changes). A split's entry is `[arm, assigned_at_ms, passed_at_ms]`: when the lead last passed the
    split, and the arm it took then (what its later sends carry)."""
    entry = state.experiments.get(experiment.key)
    if entry is not None and at_ms - entry[1] <= experiment.goal_within_ms:
        if split:
            state.experiments[experiment.key] = [arm, entry[1], at_ms]
        return
    state.experiments[experiment.key] = [arm, at_ms, at_ms] if split else [arm, at_ms]
    updates.append(experiment_record("assigned", state.lead_id, at_ms, experiment.id, arm, rule.id, message_id))


def _goals(rules: RuleSet, state: LeadState, event: Event, updates: list[dict[str, Any]]) -> None:
    """Every goal event within `goal_within` of the lead's assignment to an experiment is reported (`goal`)."""
    t = event.timestamp_ms
    ctx: _EventContext | None = None
    for key, entry in state.experiments.items():
        arm, at_ms = entry[0], entry[1]
        found = rules.experiments.get(key)
        if found is None:
            continue
        rule, experiment = found
        if experiment.goal is None or not at_ms <= t <= at_ms + experiment.goal_within_ms:
            continue
        if ctx is None:
            ctx = _EventContext(event, state, rules)
        if experiment.goal(ctx):
            value = goal_value(event.properties)
            updates.append(
                experiment_record("goal", state.lead_id, t, experiment.id, arm, rule.id, event.message_id, value)
            )


def _drop_spent_experiments(rules: RuleSet, state: LeadState, now_ms: int) -> None:
    """An assignment is remembered only during its goal window (and while its experiment exists), and a journey
    split's also while the lead is still in the journey it passed the split in (its later sends carry the arm)."""
    for key in list(state.experiments):
        found = rules.experiments.get(key)
        if found is not None and now_ms - state.experiments[key][1] <= found[1].goal_within_ms:
            continue
        if found is not None and type(found[0].logic) is JourneyLogic:
            journey = found[0].logic.load(state.rules.get(found[0].key))
            if journey is not None and journey.step is not None and journey.entry_ms <= state.experiments[key][-1]:
                continue
        del state.experiments[key]


def _store(state: LeadState, rule: Rule, slot: Slot | None) -> None:
    if slot is None:
        state.rules.pop(rule.key, None)
    else:
        state.rules[rule.key] = slot


def _fire_due(
    rules: RuleSet, state: LeadState, t: int, inclusive: bool, out: _Fired, updates: list[dict[str, Any]]
) -> None:
    timed = rules.timed
    while timed and state.rules:
        due: tuple[int, int, Rule] | None = None
        for key, slot in state.rules.items():
            if key not in timed:
                continue
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
        logic = rule.logic
        if type(logic) is JourneyLogic:
            _wake_journey(rules, state, rule, logic, deadline, out, updates)
            continue
        new_slot, firings = logic.on_deadline(rule, state.rules[rule.key], deadline)
        _store(state, rule, new_slot)
        if firings:
            view = build_view(rules, state, deadline)
            for firing in firings:
                _emit(rule, state, firing, view, out)


def _wake_journey(
    rules: RuleSet,
    state: LeadState,
    rule: Rule,
    logic: JourneyLogic,
    deadline: int,
    out: _Fired,
    updates: list[dict[str, Any]],
) -> None:
    """A journey's deadline: the lead's view at the deadline is built (once) only if a branch or a send needs it."""
    built: list[LeadView] = []

    def view() -> LeadView:
        if not built:
            built.append(build_view(rules, state, deadline))
        return built[0]

    new_slot, firings, records = logic.wake(rule, state.rules[rule.key], deadline, view)
    _store(state, rule, new_slot)
    for firing in firings:
        _emit(rule, state, firing, view(), out)
    _journey_records(state, rule, logic, records, updates)


def _journey_records(
    state: LeadState, rule: Rule, logic: JourneyLogic, records: list[Record], updates: list[dict[str, Any]]
) -> None:
    """A journey's records on `lead-updates`; a split's `assigned` becomes the experiment's assignment (after the
    step's sends: those of the same advance carry their arm already, later ones find it in the lead's memory)."""
    for record in records:
        if record.event == ASSIGNED:
            step = logic.by_id.get(record.step or "")
            if step is not None and step.experiment is not None:
                arm = record.reason or ""
                assign(state, rule, step.experiment, arm, record.at_ms, record.message_id, updates, split=True)
        else:
            updates.append(record.update(state.lead_id, rule.id))


def _show_event(
    rules: RuleSet,
    state: LeadState,
    event: Event,
    out: _Fired,
    changes: list[tuple[Rule, StageChange]],
    updates: list[dict[str, Any]],
    skip: Rule | None = None,
    converted: list[Rule] | None = None,
) -> None:
    ctx = _EventContext(event, state, rules)
    for rule in rules.for_event(event.type, event.name):
        if rule is skip:
            continue
        key = rule.key
        if converted is not None:
            conversion = rule.conversion
            if conversion is not None and conversion(ctx):
                converted.append(rule)
        slot = stored = state.rules.get(key)
        logic = rule.logic
        new_slot: Slot | None
        records: list[Record] | None = None
        if type(logic) is JourneyLogic:  # handles its own exit_on (it records the exit, may keep a goal window)
            new_slot, firings, records, stopped = logic.step(rule, slot, ctx)
            if stopped:
                out.suppressed.append((rule.id, "condition"))
        else:
            if slot is not None and rule.exit_on is not None and rule.exit_on(ctx):
                slot = None
            if type(logic) is ScoreLogic:
                new_slot, firings, change = logic.step(rule, slot, ctx)
                if change is not None:
                    changes.append((rule, change))
                if new_slot is not slot:
                    ctx.lead_changed()  # the view shows scores and stages
            else:
                new_slot, firings = logic.on_event(rule, slot, ctx)
        if new_slot is not stored:  # (inline: this runs for every rule an event may concern)
            if new_slot is None:
                del state.rules[key]
            else:
                state.rules[key] = new_slot
        for firing in firings:
            _emit(rule, state, firing, ctx.lead, out)
        if records and type(logic) is JourneyLogic:
            _journey_records(state, rule, logic, records, updates)


def _apply_event(
    rules: RuleSet, state: LeadState, event: Event, out: _Fired, updates: list[dict[str, Any]]
) -> None:
    before = withdrawal_reason(state.facts.get("tr") or EMPTY)
    apply_event(state.facts, event)
    # Only a trusted Unsubscribed (the collector's signed link, a server key) withdraws consent: a browser can send
    # any user id, and must not unsubscribe someone else.
    if event.trusted and event.type == "track" and event.name == UNSUBSCRIBED_EVENT:
        traits = state.facts.setdefault("tr", {})
        traits["unsubscribed"] = True
    after = withdrawal_reason(state.facts.get("tr") or EMPTY)
    if after != before:
        updates.append(_consent_update(state.lead_id, event, after))
    if state.experiments:
        _goals(rules, state, event, updates)
    changes: list[tuple[Rule, StageChange]] = []
    converted: list[Rule] = []
    _show_event(rules, state, event, out, changes, updates, converted=converted)
    for rule in converted:
        updates.append(
            {
                "kind": "converted",
                "lead_id": state.lead_id,
                "at_ms": event.timestamp_ms,
                "rule": rule.id,
                "event": event.name or event.type,
                "message_id": event.message_id,
            }
        )
    shown = 0
    while changes:  # breadth first: stage changes in the order they happened
        rule, change = changes.pop(0)
        updates.append(change.update(state.lead_id))
        if shown < MAX_STAGE_EVENTS:
            shown += 1
            _show_event(rules, state, change.event(state.lead_id), out, changes, updates, skip=rule)


def pending_deadlines(rules: RuleSet, state: LeadState) -> list[int]:
    """The lead's pending deadlines, sorted, deduplicated (what `Evaluation.deadlines` holds); the worker calls
    it on stored states to rebuild its deadline index (a slot stored under a rule's earlier key counts as the
    rule's, see `RuleSet.legacy`). Does not change `state`."""
    timed, legacy = rules.timed, rules.legacy
    deadlines: list[int] = []
    for key, slot in state.rules.items():
        if key not in timed and legacy:
            key = legacy.get(key, key)
        if key in timed:
            deadline = rules.by_key[key].logic.deadline(slot)
            if deadline is not None:
                deadlines.append(deadline)
    return sorted(set(deadlines)) if len(deadlines) > 1 else deadlines  # most leads have none or one


def _consent_update(lead_id: str, event: Event, reason: str | None) -> dict[str, Any]:
    """The `lead-updates` record of a change in marketing consent (the dispatcher re-checks queued actions)."""
    unsubscribe = event.type == "track" and event.name == UNSUBSCRIBED_EVENT
    return {
        "kind": "consent",
        "lead_id": lead_id,
        "at_ms": event.timestamp_ms,
        "marketing": reason is None,
        "reason": reason or "consent_given",
        "source": "unsubscribe" if unsubscribe else event.type,
        "message_id": event.message_id,
    }


def _drop_spent_gates(rules: RuleSet, state: LeadState, now_ms: int) -> None:
    """A gate is kept only while it can still block a firing (cooldown running, or fires counted today)."""
    if not state.gates:
        return
    for key in list(state.gates):
        rule = rules.by_key.get(key)
        last = state.gates[key][0]
        cooling = rule is not None and rule.cooldown_ms and now_ms - last < rule.cooldown_ms
        capped = rule is not None and rule.max_per_lead is not None and (
            rule.per_ms is None or last // rule.per_ms == now_ms // rule.per_ms
        )
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
    """One step for one lead: `item` is the lead's next event, or a `Tick` when event time passed with no event.

    - Pure: no I/O, no clock, no randomness; the same inputs give equal outputs. `state` is left untouched,
      unless the caller hands it over with `reuse_state=True`: then it is updated in place and returned (one
      copy per step saved). `state=None` is a new lead.
    - On an `Event` at t: first fire the deadlines < t (the lead's own event proves event time passed them;
      fired_at is the deadline), then update the derived facts, then let every enabled rule that may care see
      the event (in rule-set order), then, when `now_ms` is given, fire the deadlines <= now_ms.
    - On a `Tick(now)`: fire the deadlines <= now, earliest first (ties: rule-set order).
    - Every firing passes the common gates, in this order: cooldown (since this rule last fired for this lead),
      `max_per_lead` (fires per UTC day of event time), `if:` (over the lead view at firing time). A gated
      firing is dropped (and not remembered); the kind's own state moves on regardless (an absence episode
      still closes).
    - Journeys (`engine.core.kinds.journey`) run through `JourneyLogic.step` on events and `.wake` at their
      deadlines (with the lead view at the deadline, built only if a branch or a send needs it); their records
      (entered, reached, exited, completed, goal) go to `Evaluation.updates` in the order they happen, and their
      sends pass none of the gates above (a journey's `if:` applies at entry).
    - Experiments (`engine.core.experiments`, docs/rules.md "Experiments"): an action of a rule with an
      `experiment:` carries the lead's arm (`assign_arm` of `state.lead_id`; held out on the holdout arm, a
      variant's action keys merged over the rule's); its first firing within the goal window is reported as
      `assigned` and remembered in `LeadState.experiments`; an event matching the goal within `goal_within` of
      the assignment is reported as `goal` (checked before the rules see the event). A journey's `split:` assigns
      when it is reached, and the sends after it carry its experiment and arm. Entries are dropped after their
      window (a split's: also once the lead has left that journey entry).
    - Slots of rules that are no longer in the rule set (or disabled) are dropped.
    - Stage changes (score rules, see `engine.core.stages`): each one is listed in `Evaluation.updates` (the
      `lead-updates` record) and, in the same step, the synthetic `track` event `Stage Changed` is shown to the
      lead's other rules (not to the rule that made the change; facts are not updated by it). At most
      `MAX_STAGE_EVENTS` synthetic events per step, so rules reacting to stage changes cannot loop.
    - Raises what a kind raises on a slot it cannot read (`ValueError`); the worker then rejects the input.
    """
    if state is None:
        work = LeadState()
    elif reuse_state:
        work = state
    else:
        work = state.copy()
    work.read_slots(rules)
    out = _Fired()
    updates: list[dict[str, Any]] = []
    if isinstance(item, Tick):
        _fire_due(rules, work, item.now_ms, True, out, updates)
        _drop_spent_gates(rules, work, item.now_ms)
        if work.experiments:
            _drop_spent_experiments(rules, work, item.now_ms)
    else:
        if not work.lead_id:
            work.lead_id = item.lead_id
        _fire_due(rules, work, item.timestamp_ms, False, out, updates)
        _apply_event(rules, work, item, out, updates)
        if now_ms is not None:
            _fire_due(rules, work, now_ms, True, out, updates)
        _drop_spent_gates(rules, work, max(item.timestamp_ms, now_ms or 0))
        if work.experiments:
            _drop_spent_experiments(rules, work, max(item.timestamp_ms, now_ms or 0))
    if out.assigned:
        updates.extend(out.assigned)
    return Evaluation(work, out.actions, pending_deadlines(rules, work), updates, out.suppressed)
