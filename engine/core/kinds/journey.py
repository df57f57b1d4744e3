"""`kind: journey` — multi-step flows: sends, waits, waits for an event, branches on the lead, exits and goals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.core.durations import format_duration
from engine.core.experiments import Experiment
from engine.core.predicates import Condition, MatchContext, Matcher
from engine.core.ruleset import ActionSpec, Firing, Rule, Slot
from engine.events import format_ts

MAX_ID = 17  # characters of the entry message id kept in state (longer: "~" + the last 16, as score rules do)
# Runtime guard: steps one advance may pass without reaching a wait. Validation rejects loops without a wait and
# journeys of more than MAX_STEPS steps, so a loaded journey never reaches it; a lead that does leaves the journey
# (`exited`, reason `loop_guard`) instead of firing forever.
STEPS_WITHOUT_WAIT = 256
MAX_STEPS = 200
DEFAULT_GOAL_WITHIN_MS = 7 * 86_400_000

# The lead view (`engine.core.facts.LeadView`) at the time a step is reached, built only when a branch or a send
# needs it.
View = Callable[[], Mapping[str, Any]]

SEND, WAIT, WAIT_FOR, BRANCH, GOTO, END, SPLIT = "send", "wait", "wait_for", "branch", "goto", "end", "split"
ASSIGNED = "assigned"  # a Record `evaluate` turns into the experiment's assignment (not a journey record)
WAITING = frozenset({WAIT, WAIT_FOR})


class JourneySlot(NamedTuple):
    """One lead's place in one journey. Stored as the JSON array
    `[entry_ms, entry_id, step, since, wake, goal_met]`, `since` and `wake` in ms after `entry_ms` (shorter than
    epoch times; read them as `since_ms` and `wake_ms`).

    - In the journey (`step` is a step id): the lead waits at a `wait` or `wait_for` step reached at `since_ms`
      until `wake_ms` (every other step is passed at once, so a lead in a journey always has a wake).
    - Left (`step` is None): kept only while something still needs it — the goal window (`wake_ms` = entry +
      `goal_within`, when the journey has a `goal:` not yet met), or, for `re_entry: never`, as the marker that
      the lead entered once (`wake_ms` None). Otherwise the slot is dropped when the lead leaves.
    The step is kept by id, not by position: an edited journey keeps its leads at the steps that still exist.
    """

    entry_ms: int  # when the lead entered (event time of the entry event)
    entry_id: str  # the entry event's message id (longer than MAX_ID: "~" + its last MAX_ID - 1 characters)
    step: str | None  # the step the lead waits at; None: the lead has left
    since: int  # when it reached that step (left: when it left), in ms after entry_ms
    wake: int | None  # the step's deadline (left: the goal window's end, or None), in ms after entry_ms
    goal_met: int  # 1 once the goal matched for this entry (counted once per entry)

    @classmethod
    def of(
        cls, entry_ms: int, entry_id: str, step: str | None, since_ms: int, wake_ms: int | None, goal_met: int
    ) -> JourneySlot:
        """The slot with times given as epoch ms."""
        return cls(
            entry_ms, entry_id, step, since_ms - entry_ms, None if wake_ms is None else wake_ms - entry_ms, goal_met
        )

    @property
    def since_ms(self) -> int:
        return self.entry_ms + self.since

    @property
    def wake_ms(self) -> int | None:
        return None if self.wake is None else self.entry_ms + self.wake


class Record(NamedTuple):
    """One journey `lead-updates` record before `evaluate` adds the lead and journey (`update()`)."""

    event: str  # entered | reached | exited | completed | goal; `assigned` (a split's arm) is for `evaluate` only
    step: str | None
    reason: str | None  # exited: exit_on | step_removed | loop_guard | held_out; assigned: the arm
    at_ms: int
    entry_ms: int
    message_id: str | None  # the event that caused it; None when a deadline did

    def update(self, lead_id: str, journey: str) -> dict[str, Any]:
        return {
            "kind": "journey",
            "lead_id": lead_id,
            "at_ms": self.at_ms,
            "journey": journey,
            "event": self.event,
            "step": self.step,
            "reason": self.reason,
            "entry_ms": self.entry_ms,
            "message_id": self.message_id,
        }


@dataclass(frozen=True, slots=True)
class JourneyStep:
    """One compiled step. `next` is where it leads (the written `goto`/`then`, the branch's default, or the
    following step; None: off the end, which completes the journey); `otherwise` is a `wait_for`'s `else`."""

    id: str
    kind: str  # send | wait | wait_for | branch | goto | end | split
    next: str | None = None
    otherwise: str | None = None
    action: ActionSpec | None = None  # send
    marketing: bool = True  # send: whether this send is marketing (consent, quiet hours, marketing caps)
    duration_ms: int = 0  # wait: D; wait_for: within
    match: Matcher | None = None  # wait_for
    match_text: str = ""
    branches: tuple[tuple[Condition, str], ...] = ()  # branch: (if, goto), in order; else `next`
    experiment: Experiment | None = None  # split: the arm's `goto` (variants), `holdout_goto` or leaving


def _kept_id(message_id: str) -> str:
    return message_id if len(message_id) <= MAX_ID else "~" + message_id[1 - MAX_ID :]


class _Run:
    """The output of one step of one journey for one lead: sends and records, in order."""

    __slots__ = ("firings", "records")

    def __init__(self) -> None:
        self.firings: list[Firing] = []
        self.records: list[Record] = []


@dataclass(frozen=True, slots=True)
class JourneyLogic:
    """A multi-step flow per lead.

    Semantics (event time; pinned by tests/core/test_journeys.py and the brute-force reference in tests/core):
    - A lead not in the journey enters when an event matches `entry` and the rule's `if:` holds (over the lead
      view after that event), at the event's time T; a stopped entry is reported as suppressed (`condition`).
      While in the journey, `entry` events are ignored. After leaving, a later `entry` event enters again
      (`re_entry: after_exit`); with `re_entry: never` a lead enters once, ever.
    - From the step reached at T: `send` fires its action at T and moves on at once; `wait: D` pauses until
      T + D; `wait_for` pauses until a matching event at t in [T, T + within] (→ `then`, at t) or until T + within
      (→ `else`, at T + within); `branch` takes the first entry whose `if:` holds over the lead view at T (else its
      default, else the next step); `goto` jumps; `end: true`, or running off the last step, completes.
    - On an event, in this order: the goal (below); `exit_on` (events at or after entry; the lead leaves at once,
      before any `wait_for` match on the same event); a step gone from the journey (the lead leaves,
      `step_removed`); the `wait_for` match; the entry. An event that makes the lead leave does not also enter
      it again.
    - At a wake (the wait's deadline, fired by `evaluate` like any deadline): after `wait` the next step, after
      `wait_for` its `else`; a step that is no longer a wait (the journey was edited) is run then.
    - Goal (optional `goal:` matcher): counted once per entry when it matches at t in [entry, entry +
      `goal_within`], in the journey or after leaving it; it does not change the flow (`exit_on` does).
    - Sends pass none of the common gates (cooldown and `max_per_lead` do not apply; `if:` applies at entry).
    - `split` (an experiment on paths): the lead's arm (`engine.core.experiments.assign_arm` of the lead id) picks
      the variant's `goto`; the holdout arm goes to `holdout_goto`, or without one leaves (`exited`, reason
      `held_out`). The assignment is an `assigned` Record that `evaluate` reports as the experiment's; sends after
      the split carry the experiment and arm (held out on the holdout arm): in the same advance through
      `Firing.experiment`/`arm`, later from the lead's experiment memory (`evaluate`).
    - A lead passes at most `STEPS_WITHOUT_WAIT` steps in one advance; past that it leaves (`loop_guard`).
    Every step reached, entry, exit, completion and goal is a `Record` (`lead-updates`, kind `journey`).

    `evaluate` runs journeys through `step` (events) and `wake` (deadlines), which also give the records and
    take the lead view for branches and send contexts; `on_event` is `step` without the records, and the
    generic `on_deadline` is not used (a journey continuing at a deadline needs the lead's view).
    """

    entry: Matcher
    steps: tuple[JourneyStep, ...]
    never_again: bool = False  # re_entry: never
    goal: Matcher | None = None
    goal_within_ms: int = DEFAULT_GOAL_WITHIN_MS
    entry_text: str = ""
    by_id: dict[str, JourneyStep] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {step.id: step for step in self.steps})

    def load(self, slot: Slot | None) -> JourneySlot | None:
        if slot is None or type(slot) is JourneySlot:
            return slot
        if type(slot) is list and len(slot) == len(JourneySlot._fields):
            return tuple.__new__(JourneySlot, slot)
        raise ValueError(f"not a journey slot: {slot!r}")

    @property
    def has_deadlines(self) -> bool:
        return True

    def deadline(self, slot: Slot | None) -> int | None:
        if slot is None:
            return None
        journey = slot if type(slot) is JourneySlot else self.load(slot)
        if journey is None or journey.wake is None:
            return None
        return journey.entry_ms + journey.wake

    @property
    def shape(self) -> str:
        return "journey"

    # -- events -------------------------------------------------------------------------------------------

    def on_event(self, rule: Rule, slot: Slot | None, ctx: MatchContext) -> tuple[JourneySlot | None, list[Firing]]:
        new, firings, _, _ = self.step(rule, slot, ctx)
        return new, firings

    def step(
        self, rule: Rule, slot: Slot | None, ctx: MatchContext
    ) -> tuple[JourneySlot | None, list[Firing], list[Record], bool]:
        """The event `ctx.event` seen by the journey: `(new slot, sends, records, entry stopped by if:)`."""
        journey = None if slot is None else slot if type(slot) is JourneySlot else self.load(slot)
        if journey is None:  # the common case first: a lead not in the journey, an event that does not enter
            if not self.entry(ctx):
                return None, [], [], False
            return self._enter(rule, ctx)
        event = ctx.event
        t = event.timestamp_ms
        run = _Run()
        new: JourneySlot | None = journey
        left = False
        if (
            self.goal is not None
            and not journey.goal_met
            and journey.entry_ms <= t <= journey.entry_ms + self.goal_within_ms
            and self.goal(ctx)
        ):
            run.records.append(Record("goal", journey.step, None, t, journey.entry_ms, event.message_id))
            new = journey = journey._replace(goal_met=1)
            if journey.step is None:
                new = self._marker(journey)
        if journey.step is not None and t >= journey.entry_ms:
            current = self.by_id.get(journey.step)
            if rule.exit_on is not None and rule.exit_on(ctx):
                run.records.append(Record("exited", journey.step, "exit_on", t, journey.entry_ms, event.message_id))
                new, left = self._left(journey, t), True
            elif current is None:
                run.records.append(
                    Record("exited", journey.step, "step_removed", t, journey.entry_ms, event.message_id)
                )
                new, left = self._left(journey, t), True
            elif (
                current.kind == WAIT_FOR and current.match is not None and journey.since_ms <= t and current.match(ctx)
            ):
                label = event.name or event.type
                how = f"'{label}' (message {event.message_id}) arrived at {current.id}"
                new = self._advance(
                    rule, journey, current.next, t, event.message_id, lambda: ctx.lead, how, run, event.message_id
                )
                left = new is None or new.step is None
        if journey.step is None and not left and not (self.never_again and new is not None) and self.entry(ctx):
            entered, firings, records, stopped = self._enter(rule, ctx)
            if not stopped:
                return entered, firings, run.records + records, False
            return new, run.firings, run.records, True
        return new, run.firings, run.records, False

    def _enter(self, rule: Rule, ctx: MatchContext) -> tuple[JourneySlot | None, list[Firing], list[Record], bool]:
        if rule.condition is not None and not rule.condition(ctx.lead):
            return None, [], [], True
        event = ctx.event
        t = event.timestamp_ms
        run = _Run()
        run.records.append(Record("entered", None, None, t, t, event.message_id))
        entry = JourneySlot(t, _kept_id(event.message_id), None, 0, None, 0)
        label = event.name or event.type
        how = f"entered on '{label}' (message {event.message_id})"
        first = self.steps[0].id if self.steps else None
        new = self._advance(rule, entry, first, t, event.message_id, lambda: ctx.lead, how, run)
        return new, run.firings, run.records, False

    # -- deadlines ----------------------------------------------------------------------------------------

    def on_deadline(self, rule: Rule, slot: Slot, now_ms: int) -> tuple[JourneySlot | None, list[Firing]]:
        raise TypeError("a journey continues at a deadline through JourneyLogic.wake, with the lead's view")

    def wake(
        self, rule: Rule, slot: Slot, at_ms: int, view: View
    ) -> tuple[JourneySlot | None, list[Firing], list[Record]]:
        """Event time reached `deadline(slot)` = `at_ms`: the wait ends (or the goal window closes for a lead
        that has left). `view()` gives the lead view at `at_ms` (for branches and send contexts)."""
        journey = self.load(slot)
        run = _Run()
        if journey is None:
            return None, [], []
        if journey.step is None:  # the goal window closed
            return self._marker(journey), [], []
        current = self.by_id.get(journey.step)
        if current is None:
            run.records.append(Record("exited", journey.step, "step_removed", at_ms, journey.entry_ms, None))
            return self._left(journey, at_ms), [], run.records
        waited = format_duration(max(at_ms - journey.since_ms, 0))
        if current.kind == WAIT:
            start, how = current.next, f"waited {waited} at {current.id}"
        elif current.kind == WAIT_FOR:
            start, how = current.otherwise, f"nothing arrived within {waited} at {current.id}"
        else:  # the journey was edited: this step is no longer a wait; run it now
            start, how = current.id, f"step {current.id} is no longer a wait"
        new = self._advance(rule, journey, start, at_ms, None, view, how, run)
        return new, run.firings, run.records

    # -- moving on ----------------------------------------------------------------------------------------

    def _left(self, journey: JourneySlot, t: int) -> JourneySlot | None:
        """The slot after the lead left at `t`: the goal window still open, the `never` marker, or nothing."""
        if self.goal is not None and not journey.goal_met:
            end = journey.entry_ms + self.goal_within_ms
            if t <= end:
                return JourneySlot.of(journey.entry_ms, journey.entry_id, None, t, end, 0)
        left = JourneySlot.of(journey.entry_ms, journey.entry_id, None, t, None, journey.goal_met)
        return left if self.never_again else None

    def _marker(self, journey: JourneySlot) -> JourneySlot | None:
        """A left slot whose goal window is over: only `re_entry: never` keeps it."""
        if not self.never_again:
            return None
        return journey._replace(wake=None)

    def _advance(
        self,
        rule: Rule,
        journey: JourneySlot,
        start: str | None,
        t: int,
        cause: str | None,
        view: View,
        how: str,
        run: _Run,
        arrived: str | None = None,
    ) -> JourneySlot | None:
        """Run the steps from `start` at time `t` until the lead waits or leaves; returns the new slot. `cause`:
        the message id of the event that moved the lead (None: a deadline); `arrived`: that of the event a
        `wait_for` let through (part of the sends' action ids and triggers)."""
        entry_ms, entry_id = journey.entry_ms, journey.entry_id
        current, last = start, journey.step
        path = [how]
        split: tuple[Experiment, str] | None = None  # the split passed in this advance, and the arm taken
        for _ in range(STEPS_WITHOUT_WAIT):
            if current is None:  # ran off the last step
                run.records.append(Record("completed", last, None, t, entry_ms, cause))
                return self._left(journey, t)
            step = self.by_id.get(current)
            if step is None:  # only a hand-built journey can point at a missing step (validation rejects it)
                run.records.append(Record("exited", last, "step_removed", t, entry_ms, cause))
                return self._left(journey, t)
            run.records.append(Record("reached", current, None, t, entry_ms, cause))
            last, kind = current, step.kind
            if kind == SEND:
                firing = self._send(rule, journey, step, t, arrived, path)
                if split is not None:
                    firing.experiment, firing.arm = split
                run.firings.append(firing)
                current = step.next
            elif kind in WAITING:
                return JourneySlot.of(entry_ms, entry_id, current, t, t + step.duration_ms, journey.goal_met)
            elif kind == BRANCH:
                lead = view()
                chosen = next((i for i, (holds, _) in enumerate(step.branches) if holds(lead)), None)
                if chosen is None:
                    current = step.next
                    path.append(f"branch {step.id}: no condition held")
                else:
                    current = step.branches[chosen][1]
                    path.append(f"branch {step.id}: condition {chosen + 1} held")
            elif kind == GOTO:
                current = step.next
            elif kind == SPLIT and step.experiment is not None:
                experiment = step.experiment
                arm = experiment.arm(str(view()["lead_id"]))
                split = (experiment, arm)
                run.records.append(Record(ASSIGNED, current, arm, t, entry_ms, cause))
                path.append(f"split {step.id}: arm {arm}")
                variant = experiment.variant(arm)
                current = variant.goto if variant is not None else experiment.holdout_goto
                if current is None:  # the holdout arm without holdout_goto leaves the journey
                    run.records.append(Record("exited", step.id, "held_out", t, entry_ms, cause))
                    return self._left(journey, t)
            else:  # end
                run.records.append(Record("completed", current, None, t, entry_ms, cause))
                return self._left(journey, t)
        run.records.append(Record("exited", current, "loop_guard", t, entry_ms, cause))
        return self._left(journey, t)

    def _send(
        self, rule: Rule, journey: JourneySlot, step: JourneyStep, t: int, arrived: str | None, path: list[str]
    ) -> Firing:
        entry_ms, entry_id = journey.entry_ms, journey.entry_id
        key = f"journey:{entry_ms}:{entry_id}:{step.id}:{t}"
        trigger: tuple[str, ...] = (entry_id,)
        if arrived is not None:  # a `then:` path: the arriving event tells apart two arrivals in the same ms
            key += f":{arrived}"
            trigger = (entry_id, arrived)
        text = (
            f"journey {rule.id}, step {step.id}: entered at {format_ts(entry_ms)} (message {entry_id}); "
            + "; ".join(path)
        )
        details = {"journey": rule.id, "step": step.id, "entered_at": entry_ms, "reached_at": t}
        return Firing(t, key, trigger, t, text, step.action, details, step.id, step.marketing)

    # -- identity -----------------------------------------------------------------------------------------

    def merge(self, mine: Slot | None, other: Slot | None) -> JourneySlot | None:
        """The known lead's journey; the anonymous lead's when the known one is not in the journey (a lead
        in the journey wins over one that has left, so a journey in progress moves with the lead)."""
        a, b = self.load(mine), self.load(other)
        if a is None or b is None:
            return a if b is None else b
        if a.step is None and b.step is not None:
            return b
        return a
