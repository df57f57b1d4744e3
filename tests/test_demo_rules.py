"""The demo rule pack (examples/rules/) is the shipped pack (rules/) with compressed windows, nothing else."""

from __future__ import annotations

from pathlib import Path

from engine.language import load_rules

ROOT = Path(__file__).resolve().parent.parent


def _shape(rule: object) -> tuple[object, ...]:
    action = rule.action  # type: ignore[attr-defined]
    experiment = rule.experiment  # type: ignore[attr-defined]
    # An experiment's id and arms match; its holdout may differ (the demo holds out more: a small sample).
    arms = None if experiment is None else (experiment.id, tuple((v.id, v.weight) for v in experiment.variants))
    return (
        rule.id, rule.kind, rule.enabled, rule.priority, rule.marketing, rule.max_per_lead,  # type: ignore[attr-defined]
        action.connector, action.template, dict(action.payload), arms,
    )


def test_demo_rules_mirror_the_shipped_pack() -> None:
    shipped = load_rules([ROOT / "rules"])
    demo = load_rules([ROOT / "examples" / "rules"])
    # Files are grouped differently (the demo keeps the four journeys in one file): compare rule by rule.
    assert sorted(_shape(r) for r in demo.rules) == sorted(_shape(r) for r in shipped.rules)
