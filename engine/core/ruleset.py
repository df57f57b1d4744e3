"""Compiled rules: what the language layer produces and the core evaluates.

Contract:
- A `Rule` is immutable and holds everything needed on the hot path already compiled (matchers are closures,
  durations are milliseconds); no pydantic, YAML or regex is touched while evaluating.
- `Rule.version` is a short stable hash of the rule's canonical definition (with its segments inlined):
  changing any semantic field changes it, reformatting the YAML does not. Action ids include it, so an edited
  rule is a new rule.
- `RuleSet.rules` keeps load order (files sorted, rules in file order); `RuleSet.active` the enabled ones;
  `RuleSet.version` is a hash of all rule ids and versions.
- A kind's logic (`RuleLogic`) owns only its own slot of per-lead state (`LeadState.rules[rule.key]`), a small
  JSON-able value; it never touches other rules' slots and never does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from engine.core.predicates import Condition, MatchContext, Matcher

if TYPE_CHECKING:
    from engine.core.facts import LeadView


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


class RuleLogic(Protocol):
    """Kind-specific semantics over one rule's slot of lead state; slots are plain JSON, never mutated."""

    def on_event(self, rule: Rule, slot: Any, ctx: MatchContext) -> tuple[Any, list[Firing]]: ...

    def deadline(self, slot: Any) -> int | None: ...

    def on_deadline(self, rule: Rule, slot: Any, now_ms: int) -> tuple[Any, list[Firing]]: ...

    def merge(self, mine: Any, other: Any) -> Any: ...

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
    """One compiled rule. Common options live here; kind semantics live in `logic`."""

    id: str
    kind: str
    version: str
    action: ActionSpec
    logic: RuleLogic
    enabled: bool = True
    priority: int = 0
    cooldown_ms: int = 0
    max_per_lead: int | None = None  # fires per lead per UTC day (event time)
    exit_on: Matcher | None = None
    condition: Condition | None = None
    marketing: bool = True
    on_cap: str = "defer"
    description: str = ""
    source: str = ""  # "file:line" where the rule is defined
    interest: Interest | None = None  # None: the rule may react to any event
    key: str = ""  # short, stable key of this rule's slots in LeadState (derived from the id; see state_key)

    def __post_init__(self) -> None:
        if not self.key:
            shape = getattr(self.logic, "shape", self.kind)
            object.__setattr__(self, "key", state_key(f"{self.id}|{shape}"))

    @property
    def connector(self) -> str:
        return self.action.connector

    def condition_holds(self, lead: LeadView) -> bool:
        return self.condition is None or self.condition(lead)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An immutable, ordered set of compiled rules.

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
        )

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):  # type: ignore[no-untyped-def]
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


def state_key(identity: str) -> str:
    """8 hex chars standing for a rule in per-lead state: `rule id|slot shape`.

    State stays small whatever the length of the id. An edit that keeps the slot's shape (a new window, other
    matchers) keeps the pending state; one that changes it (another kind, count <-> sum, another number of
    steps) gets a new key, so old slots are dropped instead of being misread.
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
