"""Compiled rules: what the language layer produces and the core evaluates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from engine.core.predicates import Condition, MatchContext, Matcher

if TYPE_CHECKING:
    from engine.core.experiments import Experiment
    from engine.core.facts import LeadView
    from engine.core.kinds.absence import AbsenceSlot
    from engine.core.kinds.journey import JourneySlot
    from engine.core.kinds.score import ScoreSlot
    from engine.core.kinds.sequence import SequenceSlot
    from engine.core.kinds.threshold import CountWindow, SumWindow

# A slot as `orjson.loads` gives it back: untyped JSON until its kind's `load` reads it (dict: a score slot
# stored before slots were typed).
StoredSlot: TypeAlias = list[Any] | dict[str, Any]

# One rule's per-lead state, in its kind's type. Slots are NamedTuples (a tuple subclass where the length is the
# rule's), not dataclasses: immutable like the JSON values they replaced (the core never changes a slot, so state
# copies share them), and their plain tuple form is their stored JSON array, so `LeadState.to_bytes` writes them
# with no field names and no per-kind code. Entries repeated inside a slot are plain typed tuples: a NamedTuple
# costs several times a tuple to build and to read back from JSON, on the worker's hot path. A frozen slotted
# dataclass would need a per-kind encoder and cost more to build than either.
Slot: TypeAlias = "AbsenceSlot | CountWindow | SumWindow | SequenceSlot | ScoreSlot | JourneySlot | StoredSlot"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """The rule's `action:` block: where the fired action goes and with which template/payload."""

    connector: str
    template: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Firing:
    """A kind's decision that the rule fires now; the common gates (cooldown, caps, `if:`) come after."""

    at_ms: int
    key: str  # unique per firing of this rule for this lead: feeds the deterministic action id
    trigger: tuple[str, ...]
    trigger_time_ms: int
    explanation: str
    action: ActionSpec | None = None  # overrides the rule's action (score thresholds)
    details: dict[str, Any] | None = None  # kind-specific facts for templates (context["trigger"])
    # A journey's send: its step id (copied to `Action.step`). Such a firing passes none of the common gates
    # (a journey's `if:` applies at entry; cooldown and max_per_lead do not apply to journeys).
    step: str | None = None
    marketing: bool | None = None  # overrides the rule's `marketing` (a journey's send decides per connector)
    # A journey's send after a `split:`: that experiment and the lead's arm (a rule's own `experiment:` is applied
    # by `evaluate`).
    experiment: Experiment | None = None
    arm: str | None = None

    @classmethod
    def at_event(
        cls,
        t: int,
        key: str,
        trigger: tuple[str, ...],
        explanation: str,
        details: dict[str, Any],
        action: ActionSpec | None = None,
    ) -> Firing:
        """A firing caused by the event at `t`: it fires at `t`, which is also its trigger time."""
        return cls(t, key, trigger, t, explanation, action, details)


class RuleLogic(Protocol):
    """One rule kind's semantics over that rule's slot of per-lead state (`LeadState.rules[rule.key]`).

    - Pure: no I/O, no clock; it reads and returns only its own rule's slot, never another rule's.
    - Slots are immutable values: a method returns a new slot (or the same object when nothing changed, or None
      when nothing is pending); it never changes the one it was given.
    - Every method accepts the slot in its kind's type or in its stored JSON form (`StoredSlot`, straight from
      `LeadState.from_bytes`) and reads the latter with `load`, which raises `ValueError` on a slot of the wrong
      layout.
    """

    def load(self, slot: Slot | None) -> Slot | None:
        """The slot in this kind's type; formats written by earlier versions are read too."""
        ...

    def on_event(self, rule: Rule, slot: Slot | None, ctx: MatchContext) -> tuple[Slot | None, list[Firing]]:
        """The event `ctx.event` (one this rule's matchers may care about) seen by the rule."""
        ...

    @property
    def has_deadlines(self) -> bool:
        """False for kinds that act only on events: `evaluate` then never asks for their deadline."""
        ...

    def deadline(self, slot: Slot | None) -> int | None:
        """When the slot next needs a tick (event time, ms), or None."""
        ...

    def on_deadline(self, rule: Rule, slot: Slot, now_ms: int) -> tuple[Slot | None, list[Firing]]:
        """Event time reached `deadline(slot)`; called only then."""
        ...

    def merge(self, mine: Slot | None, other: Slot | None) -> Slot | None:
        """Identity merge: the known lead's slot and the anonymous lead's, folded into one."""
        ...

    @property
    def shape(self) -> str:
        """Names the layout of the slot; part of the rule's state key."""
        ...


@dataclass(frozen=True, slots=True)
class Interest:
    """The events a rule's matchers can match at all: track names and whole event types (a pre-filter)."""

    names: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def wants(self, event_type: str, name: str | None) -> bool:
        return event_type in self.types or (event_type == "track" and name in self.names)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. Common options live here; kind semantics live in `logic`.

    Immutable, and holds everything the hot path needs already compiled (matchers are closures, durations are
    milliseconds): no pydantic, YAML or regex is touched while evaluating. `version` is a short stable hash of
    the rule's canonical definition (with its segments inlined): changing any semantic field changes it,
    reformatting the YAML does not. Action ids include it, so an edited rule is a new rule.
    """

    id: str
    kind: str
    version: str
    action: ActionSpec
    logic: RuleLogic
    enabled: bool = True
    priority: int = 0
    cooldown_ms: int = 0
    max_per_lead: int | None = None  # fires per lead: ever, or per `per_ms` period (event time)
    per_ms: int | None = None  # the period of `max_per_lead` (epoch-aligned buckets; 1d = the UTC day); None: ever
    expires_after_ms: int | None = None  # an action not sent by fired_at + this is suppressed (`expired`)
    exit_on: Matcher | None = None
    condition: Condition | None = None
    marketing: bool = True
    on_cap: str = "defer"
    description: str = ""
    source: str = ""  # "file:line" where the rule is defined
    interest: Interest | None = None  # None: the rule may react to any event
    key: str = ""  # short, stable key of this rule's slots in LeadState (derived from the id; see state_key)
    # What counts as converting for this rule's actions: its `exit_on` (a journey's too), else an absence rule's
    # `unless` (derived).
    # An event matching it is reported on `lead-updates` (kind `converted`), so an action of this rule still
    # waiting in the dispatcher is not sent after it.
    conversion: Matcher | None = None
    # The rule's `experiment:` (its actions carry the arm; the holdout arm's are held out), and every experiment of
    # the rule: that one, or a journey's `split:` steps (filled from `experiment` when left empty).
    experiment: Experiment | None = None
    experiments: tuple[Experiment, ...] = ()

    def __post_init__(self) -> None:
        if self.experiment is not None and not self.experiments:
            object.__setattr__(self, "experiments", (self.experiment,))
        if not self.key:
            identity = f"{self.id}|{self.logic.shape}"
            if self.kind in FRESH_ON_EDIT:
                identity += f"|{self.version}"  # an edited rule starts afresh: its old slot and gate are dropped
            object.__setattr__(self, "key", state_key(identity))
        if self.conversion is None:
            unless: Matcher | None = getattr(self.logic, "unless", None)
            object.__setattr__(self, "conversion", self.exit_on if self.exit_on is not None else unless)

    @property
    def connector(self) -> str:
        return self.action.connector

    def condition_holds(self, lead: LeadView) -> bool:
        return self.condition is None or self.condition(lead)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An immutable, ordered set of compiled rules.

    `rules` keeps load order (files sorted, rules in file order); `active` holds the enabled ones; `version` is a
    hash of all rule ids and versions; `by_key` finds a rule by the key of its slots in `LeadState`.
    `for_event(type, name)` returns the enabled rules that can react to such an event, in rule-set order; the
    answer is memoised per (type, name) up to `DISPATCH_CACHE` distinct pairs (then computed each time).
    """

    rules: tuple[Rule, ...]
    version: str = ""
    active: tuple[Rule, ...] = ()
    by_id: Mapping[str, Rule] = field(default_factory=dict)
    by_key: Mapping[str, Rule] = field(default_factory=dict)
    score_rules: tuple[Rule, ...] = ()
    order: Mapping[str, int] = field(default_factory=dict)  # state key -> position among active rules
    timed: frozenset[str] = frozenset()  # state keys of the active rules whose kind has deadlines
    # Key an active `FRESH_ON_EDIT` rule's slots had before rule versions were part of it -> its key now: states
    # stored by earlier releases are read as the rule's own (`LeadState.read_slots`), not dropped on upgrade.
    legacy: Mapping[str, str] = field(default_factory=dict)
    # `LeadState.experiments` key -> (active rule, its experiment)
    experiments: Mapping[str, tuple[Rule, Experiment]] = field(default_factory=dict)
    _dispatch: dict[tuple[str, str | None], tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: list[Rule] | tuple[Rule, ...]) -> RuleSet:
        rules = tuple(rules)
        digest = hashlib.blake2b(digest_size=6)
        for rule in rules:
            digest.update(f"{rule.id}={rule.version};".encode())
        active = tuple(r for r in rules if r.enabled)
        return cls(
            rules=rules,
            version=digest.hexdigest(),
            active=active,
            by_id={r.id: r for r in rules},
            by_key=_unique_keys(rules),
            score_rules=tuple(r for r in active if r.kind == "score"),
            order={r.key: i for i, r in enumerate(active)},
            timed=frozenset(r.key for r in active if r.logic.has_deadlines),
            legacy={state_key(f"{r.id}|{r.logic.shape}"): r.key for r in active if r.kind in FRESH_ON_EDIT},
            experiments={x.key: (r, x) for r in active for x in r.experiments},
        )

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def get(self, rule_id: str) -> Rule | None:
        return self.by_id.get(rule_id)

    def for_event(self, event_type: str, name: str | None) -> tuple[Rule, ...]:
        key = (event_type, name)
        found = self._dispatch.get(key)
        if found is None:
            found = tuple(r for r in self.active if r.interest is None or r.interest.wants(event_type, name))
            if len(self._dispatch) < DISPATCH_CACHE:
                self._dispatch[key] = found
        return found


DISPATCH_CACHE = 4096

# Kinds whose per-lead state starts afresh when the rule's semantics change (its `version`): the rule version is part
# of their state key, so after an edit (a deploy, or simply loading edited files) their old slots and gates belong to
# no rule and are dropped like a removed rule's, pending deadlines included. Scores (a lead's accumulated score and
# stage) and journeys (a lead's place, which `step_removed` reconciles) keep their state across edits.
FRESH_ON_EDIT = frozenset({"absence", "threshold", "sequence"})


def state_key(identity: str) -> str:
    """8 hex chars standing for a rule in per-lead state: `rule id|slot shape` (`|rule version` for the kinds in
    `FRESH_ON_EDIT`).

    State stays small whatever the length of the id. For scores and journeys an edit that keeps the slot's shape
    keeps the pending state; one that changes it (another kind, count <-> sum) gets a new key, so old slots are
    dropped instead of being misread. Absence, threshold and sequence rules start afresh on any semantic edit.
    """
    return hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()


def _unique_keys(rules: tuple[Rule, ...]) -> dict[str, Rule]:
    by_key: dict[str, Rule] = {}
    for rule in rules:
        other = by_key.setdefault(rule.key, rule)
        if other is not rule:
            raise ValueError(f"rule ids {other.id!r} and {rule.id!r} share a state key; rename one of them")
    return by_key


def definition_hash(canonical: bytes) -> str:
    return hashlib.blake2b(canonical, digest_size=5).hexdigest()
