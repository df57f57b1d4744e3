"""Validated rule models → compiled `engine.core` rules (closures, milliseconds, frozen values)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from engine.core.experiments import Experiment
from engine.core.kinds.absence import AbsenceLogic
from engine.core.kinds.journey import DEFAULT_GOAL_WITHIN_MS, JourneyLogic, JourneyStep
from engine.core.kinds.score import PointsRule, ScoreLogic, ScoreThreshold
from engine.core.kinds.sequence import SequenceLogic
from engine.core.kinds.threshold import ThresholdLogic
from engine.core.predicates import (
    Condition,
    compile_condition,
    compile_matcher,
    compile_path,
    describe_matcher,
)
from engine.core.ruleset import ActionSpec, Interest, Rule, RuleLogic, definition_hash
from engine.core.stages import StageOn
from engine.language import schema
from engine.language.experiments import compile_experiment
from engine.language.journeys import BranchConditions

NON_MARKETING_CONNECTORS = frozenset({"slack", "crm", "log"})


def matcher_spec(matchers: list[schema.Matcher]) -> list[dict[str, Any]]:
    return [m.spec() for m in matchers]


def _matcher(matchers: list[schema.Matcher] | None) -> tuple[Any, str]:
    if not matchers:
        return None, ""
    spec = matcher_spec(matchers)
    compiled = compile_matcher(spec[0] if len(spec) == 1 else spec)
    return compiled, describe_matcher(spec[0] if len(spec) == 1 else spec)


def action_spec(block: schema.ActionBlock) -> ActionSpec:
    return ActionSpec(connector=block.connector, template=block.template, payload=dict(block.payload))


def _inline_segments(condition: Any, segments: Mapping[str, dict[str, Any]]) -> Any:
    """A condition's canonical form: segment names replaced by their definitions (feeds the version)."""
    if isinstance(condition, dict):
        out = {}
        for key, value in condition.items():
            if key == "segment":
                out["segment"] = {name: segments.get(name) for name in value}
            else:
                out[key] = _inline_segments(value, segments)
        return out
    if isinstance(condition, list):
        return [_inline_segments(item, segments) for item in condition]
    return condition


def _logic(model: schema.RuleBase) -> RuleLogic:
    if isinstance(model, schema.AbsenceRule):
        when, when_text = _matcher(model.when)
        unless, unless_text = _matcher(model.unless)
        return AbsenceLogic(when, unless, model.within, model.restart, model.min_matches, when_text, unless_text)
    if isinstance(model, schema.ThresholdRule):
        match, text = _matcher(model.match)
        if model.sum is not None:
            return ThresholdLogic(
                match,
                model.within,
                sum_field=compile_path(model.sum.field),
                sum_field_name=model.sum.field,
                sum_gte=model.sum.gte,
                match_text=text,
            )
        return ThresholdLogic(match, model.within, count=model.count, match_text=text)
    if isinstance(model, schema.SequenceRule):
        steps = [_matcher(step) for step in model.steps]
        return SequenceLogic(tuple(m for m, _ in steps), model.within, tuple(t for _, t in steps))
    if isinstance(model, schema.ScoreRule):

        def points_rule(spec: schema.PointsSpec) -> PointsRule:
            match, text = _matcher(spec.match)
            return PointsRule(match, spec.points, spec.daily_cap, text)

        def stage_move(spec: schema.StageOnSpec) -> StageOn:
            match, text = _matcher(spec.match)
            return StageOn(match, spec.stage, spec.allow_backward, text)

        points = tuple(points_rule(p) for p in model.points)
        thresholds = tuple(
            ScoreThreshold(t.at, t.name or f"at_{t.at:g}", action_spec(t.action) if t.action else None)
            for t in model.thresholds
        )
        stages = tuple((model.stages or {}).items())
        stage_on = tuple(stage_move(s) for s in model.stage_on)
        on_stage = tuple((name, action_spec(block)) for name, block in model.on_stage.items())
        names = {name for entry in model.stage_on for m in entry.match for name in (m.event or ())}
        by_name_only = all(m.event for entry in model.stage_on for m in entry.match)
        return ScoreLogic(
            points,
            model.half_life,
            thresholds,
            stages,
            stage_on,
            on_stage,
            stage_on_names=frozenset(names) if by_name_only else None,
        )
    raise ValueError(f"unknown rule kind {model.kind!r}")


def _journey_logic(
    model: schema.JourneyRule,
    branches: BranchConditions,
    compiled_segments: Mapping[str, Condition],
    marketing: bool | None,
) -> JourneyLogic:
    """The compiled journey: each step with its successor resolved (a missing then/else/goto, or a branch
    without a default, leads to the next step; None after the last step)."""
    steps: list[JourneyStep] = []
    goal, _ = _matcher(model.goal)
    for i, step in enumerate(model.steps):
        following = model.steps[i + 1].id if i + 1 < len(model.steps) else None
        if step.send is not None:
            spec = action_spec(step.send)
            is_marketing = marketing if marketing is not None else spec.connector not in NON_MARKETING_CONNECTORS
            steps.append(JourneyStep(step.id, "send", following, action=spec, marketing=is_marketing))
        elif step.wait is not None:
            steps.append(JourneyStep(step.id, "wait", following, duration_ms=step.wait))
        elif step.wait_for is not None:
            match, text = _matcher([step.wait_for])
            steps.append(
                JourneyStep(
                    step.id,
                    "wait_for",
                    step.then or following,
                    step.else_ or following,
                    duration_ms=step.wait_for.within,
                    match=match,
                    match_text=text,
                )
            )
        elif step.branch is not None:
            entries = step.branch
            default = entries[-1].goto if entries[-1].if_ is None else following
            conditions = tuple(
                (compile_condition(branches[(i, j)], compiled_segments), entry.goto)
                for j, entry in enumerate(entries)
                if entry.if_ is not None
            )
            steps.append(JourneyStep(step.id, "branch", default, branches=conditions))
        elif step.goto is not None:
            steps.append(JourneyStep(step.id, "goto", step.goto))
        elif step.split is not None:  # its goal defaults to the journey's goal, else its exit_on
            split = step.split
            default_goal = goal if goal is not None else _matcher(model.exit_on)[0]
            within = split.goal_within or model.goal_within
            block = split.model_copy(update={"goal_within": within})
            experiment = compile_experiment(block, split.experiment, default_goal, _matcher(split.goal)[0])
            steps.append(JourneyStep(step.id, "split", experiment=experiment))
        else:
            steps.append(JourneyStep(step.id, "end"))
    entry, entry_text = _matcher(model.entry)
    return JourneyLogic(
        entry,
        tuple(steps),
        never_again=model.re_entry == "never",
        goal=goal,
        goal_within_ms=model.goal_within if model.goal_within is not None else DEFAULT_GOAL_WITHIN_MS,
        entry_text=entry_text,
    )


def _splits(logic: RuleLogic) -> tuple[Experiment, ...]:
    """The experiments of a journey's `split:` steps, in step order (other kinds have none)."""
    if not isinstance(logic, JourneyLogic):
        return ()
    return tuple(step.experiment for step in logic.steps if step.experiment is not None)


def _interest(model: schema.RuleBase) -> Interest | None:
    """Union of every matcher of the rule; None when one of them has neither `event` nor `type`."""
    matchers: list[schema.Matcher] = []
    for name in ("when", "unless", "match", "exit_on", "entry", "goal"):
        matchers.extend(getattr(model, name, None) or ())
    if isinstance(model, schema.JourneyRule):
        matchers.extend(step.wait_for for step in model.steps if step.wait_for is not None)
    elif isinstance(model, schema.SequenceRule):
        for step in model.steps:
            matchers.extend(step)
    for points in getattr(model, "points", None) or ():
        matchers.extend(points.match)
    for entry in getattr(model, "stage_on", None) or ():
        matchers.extend(entry.match)
    names: set[str] = set()
    types: set[str] = set()
    for matcher in matchers:
        if matcher.event:
            names.update(matcher.event)
        elif matcher.type:
            types.update(matcher.type)
        else:
            return None
    return Interest(frozenset(names), frozenset(types))


OPTIONAL_SINCE_V2 = ("per", "expires_after", "experiment")
HOUR_MS = 3_600_000


def default_expiry(model: schema.RuleBase) -> int:
    """How long an action may wait in the dispatcher (quiet hours, caps, retries) before it is pointless: an
    absence rule's own `within`, capped at 24 h (a reminder a day late is no reminder); a journey's send 24 h (a
    step of a flow paced in hours and days); an alert (threshold, sequence, score) 1 h."""
    if isinstance(model, schema.AbsenceRule):
        return min(model.within, 24 * HOUR_MS)
    if isinstance(model, schema.JourneyRule):
        return 24 * HOUR_MS
    return HOUR_MS


def compile_rule(
    model: schema.RuleBase,
    condition: dict[str, Any] | None,
    segments: Mapping[str, dict[str, Any]],
    compiled_segments: Mapping[str, Condition],
    source: str,
    branches: BranchConditions | None = None,
) -> Rule:
    """The compiled rule. Never fails for a model that passed validation. Fixes the defaults that depend on other
    fields (threshold cooldown = within; `marketing` = False for the sales/internal connectors slack, crm and
    log, True otherwise; for a journey, per send) and computes the rule version from the canonical definition
    (durations in ms, segments inlined, also in journey branches; description excluded), so a reformatted file
    keeps its versions. `branches`: a journey's branch conditions as the loader validated them."""
    canonical = model.model_dump(mode="json", by_alias=True, exclude={"description"})
    for option in OPTIONAL_SINCE_V2:  # left out while unset, so adding them kept every existing rule's version
        if canonical.get(option) is None:
            canonical.pop(option, None)
    canonical["if"] = _inline_segments(condition, segments)
    for (i, j), branch_condition in (branches or {}).items():
        canonical["steps"][i]["branch"][j]["if"] = _inline_segments(branch_condition, segments)
    version = definition_hash(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    action = model.action
    if isinstance(model, schema.JourneyRule):  # the rule's action: its first send (each send keeps its own)
        action = next(step.send for step in model.steps if step.send is not None)
    elif action is None:  # score rule whose thresholds all carry their own action
        action = next(t.action for t in model.thresholds if t.action is not None)
    cooldown = model.cooldown
    if cooldown is None:
        cooldown = model.within if isinstance(model, schema.ThresholdRule) else 0
    marketing = model.marketing
    if marketing is None:
        marketing = action.connector not in NON_MARKETING_CONNECTORS
    exit_on, _ = _matcher(model.exit_on)
    logic: RuleLogic
    if isinstance(model, schema.JourneyRule):
        logic = _journey_logic(model, branches or {}, compiled_segments, model.marketing)
    else:
        logic = _logic(model)
    experiment = None
    if model.experiment is not None:  # the goal defaults to the rule's conversion: exit_on, else unless
        block = model.experiment
        default_goal = exit_on if exit_on is not None else getattr(logic, "unless", None)
        experiment = compile_experiment(block, block.id or model.id, default_goal, _matcher(block.goal)[0])
    return Rule(
        id=model.id,
        kind=model.kind,
        version=version,
        action=action_spec(action),
        logic=logic,
        enabled=model.enabled,
        priority=model.priority,
        cooldown_ms=cooldown,
        max_per_lead=model.max_per_lead,
        per_ms=model.per,
        expires_after_ms=model.expires_after if model.expires_after is not None else default_expiry(model),
        exit_on=exit_on,
        condition=compile_condition(condition, compiled_segments) if condition else None,
        marketing=marketing,
        on_cap=model.on_cap,
        interest=_interest(model),
        description=model.description,
        source=source,
        experiment=experiment,
        experiments=_splits(logic),
    )
