"""Experiments in rule files (docs/rules.md, "Experiments"): the structure checks that point at the offending key
(duplicate or reserved variant ids, `goto` outside a journey split, a missing goal, experiment ids used twice),
and the compiled `engine.core.experiments.Experiment`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.core.experiments import DEFAULT_GOAL_WITHIN_MS, Experiment, Variant
from engine.core.predicates import Matcher
from engine.language import schema

# (location below the rule, message, whether to point at the key rather than its value)
Report = Callable[[Sequence[Any], str, bool], None]


def check_variants(
    variants: Sequence[schema.VariantBlock], where: tuple[Any, ...], report: Report, in_split: bool
) -> None:
    """Variant ids unique and not reserved; `goto:` only (and always) in a journey split, `action:` only in a rule."""
    seen: dict[str, int] = {}
    for i, variant in enumerate(variants):
        at = (*where, "variants", i)
        if variant.id in schema.RESERVED_ARMS:
            report((*at, "id"), f"variant id {variant.id!r} is reserved (the arms `holdout` and `treatment`)", False)
        elif variant.id in seen:
            report(
                (*at, "id"),
                f"duplicate variant id {variant.id!r} (first used by variant {seen[variant.id] + 1})",
                False,
            )
        else:
            seen[variant.id] = i
        if in_split:
            if variant.goto is None:
                report(at, f"variant {variant.id!r} of a split needs `goto:` (the step its leads go to)", False)
            if variant.action is not None:
                report((*at, "action"), "a split's variants go to steps (`goto:`); put the sends in those steps", True)
        elif variant.goto is not None:
            report((*at, "goto"), "`goto:` belongs to the variants of a journey's `split:` step", True)


def check_rule_experiment(raw: dict[str, Any], model: schema.RuleBase, report: Report) -> None:
    """A rule's `experiment:` block (after its schema)."""
    block = model.experiment
    if block is None:
        return
    if isinstance(model, schema.JourneyRule):
        report(("experiment",), "a journey experiments on paths: use a `split:` step", True)
        return
    check_variants(block.variants or (), ("experiment",), report, in_split=False)
    has_default_goal = model.exit_on is not None or getattr(model, "unless", None) is not None
    if block.goal is None and not has_default_goal:
        report(
            ("experiment",),
            "the experiment needs a `goal:` (what counts as a conversion): the rule has no `unless:` or `exit_on:` "
            "to default to",
            True,
        )


def compile_experiment(
    block: schema.ExperimentBlock | schema.SplitBlock,
    experiment_id: str,
    default_goal: Matcher | None,
    goal: Matcher | None,
) -> Experiment:
    """The compiled experiment; `goal`: the block's own goal compiled (None: `default_goal`)."""
    variants = tuple(
        Variant(
            v.id,
            v.weight,
            v.action.model_dump(exclude_none=True) if v.action is not None else None,
            v.goto,
        )
        for v in (block.variants or ())
    )
    return Experiment(
        experiment_id,
        block.holdout,
        variants,
        goal if goal is not None else default_goal,
        block.goal_within if block.goal_within is not None else DEFAULT_GOAL_WITHIN_MS,
        holdout_goto=getattr(block, "holdout_goto", None),
    )
