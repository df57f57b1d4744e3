"""`experiment:` on rules and `split:` in journeys: the issue's example validates, problems point at file:line:col,
and a rule without an experiment keeps its version (so its action ids)."""

from __future__ import annotations

import pytest

from engine.language import RuleFileError, parse_rules

RULE = """rules:
  - id: cart_abandoned
    kind: absence
    when: {event: Product Added}
    unless: {event: Order Completed}
    within: 1h
    action: {connector: email, template: cart_a}
"""

ISSUE_EXAMPLE = (
    RULE
    + """    experiment:
      id: cart-copy-test          # optional; default: the rule id
      holdout: 10%                # control group: fired, logged, never sent
      variants:                   # optional; weights are relative
        - {id: a, weight: 50}                                   # the rule's action as it is
        - {id: b, weight: 50, action: {template: cart_b}}      # keys merged over the rule's action
      goal: {event: "Order Completed"}   # what counts as a conversion (default: the rule's unless / exit_on)
      goal_within: 7d
"""
)


def problems(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, "x.yaml")
    return [str(p) for p in info.value.problems]


def test_the_issue_example_validates_and_the_default_id_is_the_rule_id() -> None:
    rule = parse_rules(ISSUE_EXAMPLE).rules[0]
    assert rule.experiment is not None and rule.experiment.id == "cart-copy-test"
    assert [(v.id, v.weight, v.action) for v in rule.experiment.variants] == [
        ("a", 50, None),
        ("b", 50, {"template": "cart_b"}),
    ]
    plain = parse_rules(RULE + "    experiment: {holdout: 5%}\n").rules[0]
    assert plain.experiment is not None and plain.experiment.id == "cart_abandoned"
    assert plain.experiment.holdout == 0.05 and plain.experiment.goal is not None  # the rule's unless


def test_a_rule_without_an_experiment_keeps_its_version() -> None:
    before = parse_rules(RULE).rules[0].version
    assert parse_rules(RULE).rules[0].version == before
    assert parse_rules(ISSUE_EXAMPLE).rules[0].version != before


def test_rule_experiment_problems_point_at_the_key() -> None:
    text = (
        RULE
        + """    experiment:
      holdout: 95%
      variants:
        - {id: a, weight: 0}
        - {id: a, weight: 2, action: {templat: x}}
        - {id: holdout, goto: s1}
"""
    )
    found = problems(text)
    assert (
        "x.yaml:9:16: rule 'cart_abandoned': experiment.holdout: holdout must be between 0% and 90% (got '95%')"
        in found
    )
    assert any(p.startswith("x.yaml:11:27: rule 'cart_abandoned': experiment.variants.weight:") for p in found)
    assert any(p.startswith("x.yaml:12:39: rule 'cart_abandoned': unknown key 'templat'") for p in found), found


def test_structure_problems_duplicate_reserved_goto_goal() -> None:
    text = (
        RULE.replace("    unless: {event: Order Completed}\n", "")
        + """    experiment:
      variants:
        - {id: a}
        - {id: a}
        - {id: holdout, goto: s1}
"""
    )
    assert problems(text) == [
        "x.yaml:7:5: rule 'cart_abandoned': the experiment needs a `goal:` (what counts as a conversion): the rule "
        "has no `unless:` or `exit_on:` to default to",
        "x.yaml:10:16: rule 'cart_abandoned': duplicate variant id 'a' (first used by variant 1)",
        "x.yaml:11:16: rule 'cart_abandoned': variant id 'holdout' is reserved (the arms `holdout` and `treatment`)",
        "x.yaml:11:25: rule 'cart_abandoned': `goto:` belongs to the variants of a journey's `split:` step",
    ]


def test_experiment_ids_are_unique_across_rules() -> None:
    second = ISSUE_EXAMPLE.replace("cart_abandoned", "cart_two").replace("rules:\n", "")
    assert problems(ISSUE_EXAMPLE + second) == [
        "x.yaml:22:5: rule 'cart_two': experiment id 'cart-copy-test' is already used by rule 'cart_abandoned' "
        "(x.yaml:2); experiment ids must be unique (give `id:` another name)"
    ]


def test_split_problems_unknown_goto_and_structure() -> None:
    text = """rules:
  - id: j
    kind: journey
    entry: {event: A}
    goal: {event: B}
    steps:
      - id: ab
        split:
          experiment: j-test
          holdout: 10%
          holdout_goto: nowhere
          variants:
            - {id: a, weight: -1, goto: s1}
            - {id: b, goto: s9}
            - {id: c}
      - {id: s1, send: {connector: email, template: t}}
"""
    found = problems(text)
    assert any(p.startswith("x.yaml:13:31: rule 'j': steps.split.variants.weight:") for p in found), found
    text = text.replace("weight: -1", "weight: 1")
    assert problems(text) == [
        "x.yaml:11:25: rule 'j': unknown step 'nowhere'; steps: ab, s1",
        "x.yaml:14:29: rule 'j': unknown step 's9'; steps: ab, s1",
        "x.yaml:15:15: rule 'j': variant 'c' of a split needs `goto:` (the step its leads go to)",
    ]
