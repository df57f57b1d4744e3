"""`kind: journey` in rule files: the issue's example validates, structural problems point at file:line:col,
versions ignore formatting but not semantics (segments inlined in branches too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.kinds.journey import JourneyLogic
from engine.language import RuleFileError, load_rules, parse_rules

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"

ISSUE_EXAMPLE = """
rules:
  - id: cart_rescue
    kind: journey
    entry: {event: "Product Added"}          # a matcher, as `when` elsewhere (where, segments, if: all apply)
    exit_on: {event: "Order Completed"}     # optional matcher: leaves the journey at once, from any step
    re_entry: after_exit                    # after_exit (default) | never
    steps:
      - {id: w1, wait: 1h}
      - {id: r1, send: {connector: email, template: cart_reminder}}
      - {id: w2, wait_for: {event: "Product Viewed", within: 1d}, then: r3, else: r2}
      - {id: r2, send: {connector: email, template: cart_discount}}
      - {id: stop, end: true}
      - {id: r3, send: {connector: slack, template: hot_lead}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, "j.yaml")
    return [str(p) for p in info.value.problems]


def journey(steps: str, extra: str = "") -> str:
    return f"rules:\n  - id: j\n    kind: journey\n    entry: {{event: A}}\n{extra}    steps:\n{steps}"


def test_the_issue_example_validates_and_compiles() -> None:
    rule = parse_rules(ISSUE_EXAMPLE).rules[0]
    assert rule.kind == "journey" and isinstance(rule.logic, JourneyLogic)
    steps = {s.id: s for s in rule.logic.steps}
    assert [(s.id, s.kind, s.next) for s in rule.logic.steps] == [
        ("w1", "wait", "r1"),
        ("r1", "send", "w2"),
        ("w2", "wait_for", "r3"),
        ("r2", "send", "stop"),
        ("stop", "end", None),
        ("r3", "send", None),  # running off the last step completes the journey
    ]
    assert steps["w2"].otherwise == "r2" and steps["w2"].duration_ms == 86_400_000
    assert steps["r1"].marketing and not steps["r3"].marketing  # per send: slack alerts are not marketing
    assert rule.action.connector == "email" and rule.expires_after_ms == 86_400_000
    assert rule.conversion is rule.exit_on is not None  # exit_on is the journey's conversion
    assert rule.interest is not None
    assert rule.interest.names == {"Product Added", "Order Completed", "Product Viewed"}


def test_structural_problems_point_at_the_offending_key() -> None:
    text = journey(
        "      - {id: a, wait: 1h, send: {connector: log}}\n"  # line 9
        "      - {id: b, send: {connector: log}, then: a}\n"  # line 10
        "      - {id: b, goto: nowhere}\n"  # line 11
        "      - {id: c, branch: [{goto: a}, {if: {score: {gte: 1}}, goto: a}]}\n",  # line 12
        "    cooldown: 1h\n    max_per_lead: 1\n",  # lines 6-7 (the action: line 5)
    ).replace("    entry: {event: A}\n", "    entry: {event: A}\n    action: {connector: log}\n")
    assert problems(text) == [
        "j.yaml:5:5: rule 'j': a journey sends from its steps (`send:`); remove the rule-level `action:`",
        "j.yaml:6:5: rule 'j': `cooldown` does not apply to a journey: its sends are paced by its steps "
        "(`wait:`, `wait_for:`)",
        "j.yaml:7:5: rule 'j': `max_per_lead` does not apply to a journey: use `re_entry: never` for one entry "
        "per lead",
        "j.yaml:9:17: rule 'j': step 'a' needs exactly one of send, wait, wait_for, branch, goto, end, split "
        "(found: send, wait)",
        "j.yaml:10:41: rule 'j': `then:` belongs to a wait_for step; step 'b' is a send step "
        "(to jump elsewhere, add a `goto:` step)",
        "j.yaml:11:14: rule 'j': duplicate step id 'b' (first used by step 2)",
        "j.yaml:11:23: rule 'j': unknown step 'nowhere'; steps: a, b, c",
        "j.yaml:12:26: rule 'j': a branch entry without `if:` is the default and must come last",
    ]


def test_unreachable_steps_and_loops_without_a_wait_are_reported() -> None:
    text = journey(
        "      - {id: a, send: {connector: log}}\n"
        "      - {id: b, branch: [{if: {traits.vip: true}, goto: a}], }\n"
        "      - {id: c, wait: 1d}\n"
        "      - {id: d, goto: c}\n"
        "      - {id: e, send: {connector: log}}\n"
    )
    assert problems(text) == [
        "j.yaml:6:14: rule 'j': steps a -> b -> a loop without passing a wait (it would send forever); "
        "put a `wait:` or `wait_for:` step in the loop",
        "j.yaml:10:14: rule 'j': step 'e' can never be reached: no step leads to it",
    ]
    looping_through_a_wait = journey(
        "      - {id: a, send: {connector: log}}\n      - {id: b, wait: 7d}\n      - {id: c, goto: a}\n"
    )
    assert parse_rules(looping_through_a_wait).rules[0].kind == "journey"


def test_durations_conditions_and_sends_are_checked_all_at_once() -> None:
    text = journey(
        "      - {id: a, wait: 0s}\n"
        "      - {id: b, wait_for: {event: B, within: 10 minutes}}\n"
        "      - {id: c, branch: [{if: {segment: vip}, goto: a}, {if: {nope: 1}, goto: a}]}\n"
        "      - {id: d, send: {connector: emial}}\n"
    )
    found = problems(text)
    assert [p.split(": ", 1)[0] for p in found] == [
        "j.yaml:6:23",
        "j.yaml:7:46",
        "j.yaml:8:41",
        "j.yaml:8:69",
        "j.yaml:9:35",
    ]
    assert "must be longer than 0" in found[0] and "bad duration" in found[1]
    assert "unknown segment 'vip'" in found[2] and "unknown lead path 'nope'" in found[3]
    assert "unknown connector 'emial'" in found[4]
    assert "needs at least one `send:` step" in problems(journey("      - {id: a, wait: 1h}\n"))[0]


def test_versions_ignore_formatting_but_follow_segments_used_in_branches() -> None:
    base = """
segments:
  vip: {traits.plan: pro}
rules:
  - id: j
    kind: journey
    entry: {event: A}
    steps:
      - {id: b, branch: [{if: {segment: vip}, goto: s}]}
      - {id: t, send: {connector: log}}
      - {id: s, send: {connector: email}}
"""
    reformatted = base.replace(
        "      - {id: t, send: {connector: log}}", "      - id: t\n        send:\n          connector: log"
    )
    other_segment = base.replace("traits.plan: pro", "traits.plan: business")
    version = parse_rules(base).rules[0].version
    assert parse_rules(reformatted).rules[0].version == version
    assert parse_rules(other_segment).rules[0].version != version


def test_the_shipped_journey_packs_load() -> None:
    pack = load_rules([REPO_RULES])
    journeys = {r.id: r for r in pack.rules if r.kind == "journey"}
    assert set(journeys) == {"onboarding", "b2b_nurture", "winback", "referral_ask"}
    files = {rule_id: Path(rule.source.split(":")[0]).name for rule_id, rule in journeys.items()}
    assert files == {
        "onboarding": "onboarding.yaml",
        "b2b_nurture": "nurture.yaml",
        "winback": "winback.yaml",
        "referral_ask": "referral.yaml",
    }
