"""The demo's ground truth is the experiment the demo runs: the sample generator (examples/generate_clickstream.py)
holds out exactly the shoppers the demo's cart rule holds out (same experiment id, holdout and formula)."""

from __future__ import annotations

from pathlib import Path

from engine.core.experiments import assign_arm
from engine.language import load_rules
from examples.generate_clickstream import CART_EXPERIMENT, CART_HOLDOUT, COMEBACK_RATE, experiment_arm

ROOT = Path(__file__).resolve().parents[2]


def test_the_generator_knows_the_demo_rules_experiment() -> None:
    rules = {rule.id: rule for rule in load_rules([ROOT / "examples" / "rules"]).rules}
    experiment = rules["cart_abandoned"].experiment
    assert experiment is not None
    assert (experiment.id, experiment.holdout, experiment.variants) == (CART_EXPERIMENT, CART_HOLDOUT, ())
    assert COMEBACK_RATE["treatment"] > COMEBACK_RATE["holdout"]  # a real effect to measure


def test_the_generator_assigns_like_the_core() -> None:
    for n in range(3_000):
        for lead in (f"u{n:05d}", f"anon-{n}"):
            assert experiment_arm(CART_EXPERIMENT, lead, CART_HOLDOUT) == assign_arm(CART_EXPERIMENT, lead,
                                                                                     CART_HOLDOUT, [])  # fmt: skip
