"""The rule file schema (pydantic), used only at load time — never on the evaluation hot path. Conditions
(`if:`, `segments:`) are validated by `engine.language.conditions` because their keys are free-form paths."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    model_serializer,
    model_validator,
)

from engine.core.durations import parse_duration
from engine.core.kinds.journey import MAX_STEPS
from engine.core.predicates import OPERATORS

Scalar = str | int | float | bool | None
EventType = Literal["track", "page", "screen", "identify", "alias", "group"]
KINDS = ("absence", "threshold", "sequence", "score", "journey")
ID_PATTERN = r"^[a-z0-9_]+$"


def _duration(value: Any) -> int:
    return parse_duration(value)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | dict) else value


def normalize_predicate(value: Any) -> Any:
    """`"x"` → `{eq: "x"}`, `[a, b]` → `{in: [a, b]}`, a mapping is taken as written."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {"in": value}
    return {"eq": value}


def _where(value: Any) -> Any:
    if isinstance(value, dict):
        return {path: normalize_predicate(ops) for path, ops in value.items()}
    return value


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be longer than 0")
    return value


Duration = Annotated[int, BeforeValidator(_duration)]
PositiveDuration = Annotated[int, BeforeValidator(_duration), AfterValidator(_positive)]


class Strict(BaseModel):
    """Base of every rule-file model: unknown keys are errors, values are frozen. Across the models, durations
    are parsed to milliseconds, a single matcher may be written as a mapping or a list (any-of), and a predicate
    written as a scalar means `eq`, as a list `in`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Predicate(Strict):
    """Operators on one value; several in one mapping must all hold."""

    eq: Scalar = None
    ne: Scalar = None
    in_: list[Scalar] | None = Field(None, alias="in")
    gt: float | str | None = None
    gte: float | str | None = None
    lt: float | str | None = None
    lte: float | str | None = None
    exists: bool | None = None
    prefix: str | None = None
    contains: str | int | float | bool | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Predicate:
        if not self.model_fields_set:
            raise ValueError(f"bad predicate: empty; use one of the operators {', '.join(OPERATORS)}")
        return self

    def operators(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, include=self.model_fields_set)


class Matcher(Strict):
    """Selects events: `event` names, `type`s, `where` predicates, and `trusted: true` for events a visitor
    cannot send (a server write key or a verified user hash; see docs/rules.md, "Trusted events")."""

    event: Annotated[list[str] | None, BeforeValidator(_as_list)] = None
    type: Annotated[list[EventType] | None, BeforeValidator(_as_list)] = None
    where: Annotated[dict[str, Predicate] | None, BeforeValidator(_where)] = None
    trusted: StrictBool = False

    @model_serializer(mode="wrap")
    def _without_default_trust(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # `trusted: false` is the default and is left out, so the rule versions (hashes of the dump) of every
        # rule written before `trusted` existed stay the same, and with them their action ids.
        data: dict[str, Any] = handler(self)
        if not self.trusted:
            data.pop("trusted", None)
        return data

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": self.event,
            "type": self.type,
            "where": {path: p.operators() for path, p in (self.where or {}).items()},
        }
        if self.trusted:
            out["trusted"] = True
        return out


Matchers = Annotated[list[Matcher], BeforeValidator(_as_list), Field(min_length=1)]


class ActionBlock(Strict):
    connector: str
    template: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


EXPERIMENT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
RESERVED_ARMS = ("holdout", "treatment")
MAX_HOLDOUT = 0.9


def _holdout(value: Any) -> float:
    """`10%` (0 to 90 %) → 0.1; a bare number is read as a fraction (0.1)."""
    if isinstance(value, bool):
        raise ValueError("write the holdout as a percentage, e.g. 10%")
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f"write the holdout as a percentage, e.g. 10% (got {value!r})")
        try:
            fraction = float(text[:-1]) / 100
        except ValueError:
            raise ValueError(f"write the holdout as a percentage, e.g. 10% (got {value!r})") from None
    elif isinstance(value, int | float):
        fraction = float(value)
    else:
        raise ValueError("write the holdout as a percentage, e.g. 10%")
    if not 0 <= fraction <= MAX_HOLDOUT:
        raise ValueError(f"holdout must be between 0% and 90% (got {value!r})")
    return fraction


Holdout = Annotated[float, BeforeValidator(_holdout)]


class VariantAction(Strict):
    """A variant's `action:`: the keys it merges over the rule's action (payload keys merge into its payload)."""

    connector: str | None = None
    template: str | None = None
    payload: dict[str, Any] | None = None


class VariantBlock(Strict):
    """One arm: `{id, weight}` (weights are relative), with `action:` keys in a rule, `goto:` in a journey split."""

    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
    weight: Annotated[float, Field(gt=0)] = 1
    action: VariantAction | None = None
    goto: Annotated[str, Field(pattern=ID_PATTERN, max_length=64)] | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.action is not None:
            data["action"] = self.action.model_dump(exclude_none=True)
        return {k: v for k, v in data.items() if v is not None}


class ExperimentBlock(Strict):
    """A rule's `experiment:` (docs/rules.md, "Experiments"); the structure (duplicate variant ids, reserved ids,
    `goto` outside journeys) is checked by `engine.language.experiments`."""

    id: Annotated[str, Field(pattern=EXPERIMENT_ID_PATTERN, max_length=64)] | None = None
    holdout: Holdout = 0.0
    variants: Annotated[list[VariantBlock], Field(min_length=1)] | None = None
    goal: Matchers | None = None
    goal_within: PositiveDuration | None = None


class RuleBase(Strict):
    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
    kind: str
    description: str = ""
    enabled: bool = True
    priority: int = 0
    cooldown: Duration | None = None
    max_per_lead: Annotated[int, Field(ge=1)] | None = None
    per: Duration | None = None  # the period of `max_per_lead`; without it the count is for the lead's lifetime
    expires_after: Duration | None = None  # an action not sent by then is dropped at send time (`expired`)
    exit_on: Matchers | None = None
    if_: dict[str, Any] | None = Field(None, alias="if")
    marketing: bool | None = None
    on_cap: Literal["defer", "drop"] = "defer"
    action: ActionBlock
    experiment: ExperimentBlock | None = None


class AbsenceRule(RuleBase):
    kind: Literal["absence"]
    when: Matchers
    unless: Matchers | None = None
    within: Duration
    restart: bool = True
    min_matches: Annotated[int, Field(ge=1, le=100)] = 1


class SumSpec(Strict):
    field: str
    gte: float


class ThresholdRule(RuleBase):
    kind: Literal["threshold"]
    match: Matchers
    within: Duration
    count: Annotated[int, Field(ge=1, le=1000)] | None = None
    sum: SumSpec | None = None

    @model_validator(mode="after")
    def _count_or_sum(self) -> ThresholdRule:
        if (self.count is None) == (self.sum is None):
            raise ValueError("a threshold rule needs exactly one of `count: N` or `sum: {field: PATH, gte: X}`")
        return self


class SequenceRule(RuleBase):
    kind: Literal["sequence"]
    steps: Annotated[list[Matchers], Field(min_length=2, max_length=6)]
    within: Duration


class PointsSpec(Strict):
    match: Matchers
    points: float
    daily_cap: Annotated[float, Field(gt=0)] | None = None


class ScoreThreshold(Strict):
    at: float
    name: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    action: ActionBlock | None = None


class StageOnSpec(Strict):
    """`stage_on:` entry: an event matching `match` moves the lead to `stage` (forward only unless allowed)."""

    match: Matchers
    stage: Annotated[str, Field(pattern=ID_PATTERN)]
    allow_backward: bool = False


class ScoreRule(RuleBase):
    kind: Literal["score"]
    points: Annotated[list[PointsSpec], Field(min_length=1)]
    half_life: Duration | None = None
    thresholds: list[ScoreThreshold] = Field(default_factory=list)
    stages: dict[Annotated[str, Field(pattern=ID_PATTERN)], float | None] | None = None
    stage_on: list[StageOnSpec] = Field(default_factory=list)
    on_stage: dict[str, ActionBlock] = Field(default_factory=dict)
    action: ActionBlock | None = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _every_threshold_has_an_action(self) -> ScoreRule:
        if self.action is None and (not self.thresholds or any(t.action is None for t in self.thresholds)):
            raise ValueError("give the score rule an `action:` or give every threshold its own `action:`")
        if self.stages is not None:
            values = [v for v in self.stages.values() if v is not None]
            if values != sorted(values):
                raise ValueError(
                    "`stages:` must be listed from the lowest score to the highest "
                    "(stages reached only by events have `null` and may sit anywhere)"
                )
        for where, stage in [("stage_on", e.stage) for e in self.stage_on] + [("on_stage", s) for s in self.on_stage]:
            if stage not in (self.stages or {}):
                known = ", ".join(self.stages or {}) or "none"
                raise ValueError(
                    f"`{where}:` names stage {stage!r}, which is not in `stages:` (known: {known}); "
                    "add it to `stages:` (with `null` if only events reach it)"
                )
        return self


StepId = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
STEP_KINDS = ("send", "wait", "wait_for", "branch", "goto", "end", "split")


class SplitBlock(Strict):
    """`split: {experiment: ID, holdout: 10%, holdout_goto: STEP, variants: [{id, weight, goto}], goal, goal_within}`:
    an experiment on a journey's paths. Without `holdout_goto` the holdout arm leaves the journey (`exited`, reason
    `held_out`); `goal`/`goal_within` default to the journey's `goal:` (else its `exit_on:`) and `goal_within`."""

    experiment: Annotated[str, Field(pattern=EXPERIMENT_ID_PATTERN, max_length=64)]
    holdout: Holdout = 0.0
    holdout_goto: StepId | None = None
    variants: Annotated[list[VariantBlock], Field(min_length=1)]
    goal: Matchers | None = None
    goal_within: PositiveDuration | None = None


class WaitFor(Matcher):
    """`wait_for: {MATCHER, within: DURATION}`: a matcher (event, type, where, trusted) and how long to wait."""

    within: PositiveDuration


class BranchEntry(Strict):
    """One entry of `branch:`: `{if: CONDITION, goto: ID}`, or the default `{goto: ID}` (last)."""

    if_: Any = Field(None, alias="if")  # a condition, checked by engine.language.journeys.check_branch_conditions
    goto: StepId


class JourneyStep(Strict):
    """One step: an `id` and exactly one of `send`, `wait`, `wait_for` (with optional `then`/`else`), `branch`,
    `goto`, `end: true` (the structure — one kind per step, targets, reachability, loops — is checked by
    `engine.language.journeys`, which can point at the offending key)."""

    id: StepId
    send: ActionBlock | None = None
    wait: PositiveDuration | None = None
    wait_for: WaitFor | None = None
    then: StepId | None = None
    else_: StepId | None = Field(None, alias="else")
    branch: Annotated[list[BranchEntry], Field(min_length=1)] | None = None
    goto: StepId | None = None
    end: Literal[True] | None = None
    split: SplitBlock | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # only what the step says goes into the rule version (adding a step kind later keeps versions)
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}

    @property
    def kinds(self) -> list[str]:
        return [kind for kind in STEP_KINDS if getattr(self, kind) is not None]


class JourneyRule(RuleBase):
    """`kind: journey` (docs/rules.md, "Journeys"): `entry`, optional `exit_on`, `re_entry`, `steps`, and the
    optional `goal:` matcher counted within `goal_within` (default 7d) of entry. Sends come from the steps: a
    journey has no rule-level `action:`, and no `cooldown`, `max_per_lead` or `per` (rejected by the loader)."""

    kind: Literal["journey"]
    entry: Matchers
    re_entry: Literal["after_exit", "never"] = "after_exit"
    steps: Annotated[list[JourneyStep], Field(min_length=1, max_length=MAX_STEPS)]
    goal: Matchers | None = None
    goal_within: PositiveDuration | None = None
    action: ActionBlock | None = None  # type: ignore[assignment]


RULE_MODELS: dict[str, type[RuleBase]] = {
    "absence": AbsenceRule,
    "threshold": ThresholdRule,
    "sequence": SequenceRule,
    "score": ScoreRule,
    "journey": JourneyRule,
}
