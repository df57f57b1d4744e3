"""Experiments in the core: the assignment formula (against a direct hashlib computation, and balanced), the arm on
every action, held-out actions, the variant's action keys, assignment and goal records, the bounded memory."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from engine.core import LeadState, Tick, evaluate
from engine.core.experiments import HOLDOUT, TREATMENT, assign_arm, goal_value, money
from engine.core.model import Action
from engine.core.predicates import comparable_number
from engine.core.simulate import simulate
from tests.core.helpers import MIN, at, rules, track

RULES = """
rules:
  - id: cart_abandoned
    kind: absence
    when: {event: Product Added}
    unless: {event: Order Completed}
    within: 30m
    action: {connector: email, template: cart_a, payload: {tone: plain}}
    experiment:
      id: cart-copy-test
      holdout: 10%
      variants:
        - {id: a, weight: 50}
        - {id: b, weight: 50, action: {template: cart_b, payload: {coupon: X}}}
      goal: {event: "Order Completed"}
      goal_within: 2h
"""


def _direct(experiment: str, lead: str, holdout: float, variants: list[tuple[str, float]]) -> str:
    """The issue's formula written out again, independently."""
    u = int.from_bytes(hashlib.sha256(f"{experiment}:{lead}".encode()).digest()[:8], "big") / 2**64
    if u < holdout:
        return "holdout"
    if not variants:
        return "treatment"
    v = (u - holdout) / (1 - holdout)
    total = sum(w for _, w in variants)
    acc = 0.0
    for name, weight in variants:
        acc += weight
        if acc / total > v:
            return name
    raise AssertionError("no variant")


def test_assignment_matches_the_formula_for_many_ids() -> None:
    for n in range(3000):
        lead = f"lead-{n}" if n % 3 else f"anon_{n * 7919:x}"
        assert assign_arm("exp", lead, 0.1, [("a", 50), ("b", 50)]) == _direct("exp", lead, 0.1, [("a", 50), ("b", 50)])
        assert assign_arm("x-2", lead, 0.25, [("a", 1), ("b", 2), ("c", 3)]) == _direct(
            "x-2", lead, 0.25, [("a", 1), ("b", 2), ("c", 3)]
        )
        assert assign_arm("t", lead, 0.0, []) == TREATMENT


def test_arms_are_balanced_chi_square() -> None:
    """20,000 ids into holdout 10 % / a 45 % / b 45 %: chi-square with 2 degrees of freedom below its 0.1 %
    critical value (13.8)."""
    n = 20_000
    counts = {"holdout": 0, "a": 0, "b": 0}
    for i in range(n):
        counts[assign_arm("cart-copy-test", f"user-{i}", 0.1, [("a", 50), ("b", 50)])] += 1
    expected = {"holdout": 0.1 * n, "a": 0.45 * n, "b": 0.45 * n}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in counts)
    assert chi2 < 13.8, (counts, chi2)
    assert math.isclose(counts["holdout"] / n, 0.1, abs_tol=0.01)


def test_goal_value_reads_revenue_then_total_then_value() -> None:
    assert goal_value({"revenue": 12.5, "total": 99}) == 12.5
    assert goal_value({"total": "40"}) == 40.0
    assert goal_value({"value": 3}) == 3.0
    assert goal_value({"revenue": True}) is None
    # Not amounts: one of them would poison every sum of the report.
    assert goal_value({"revenue": "nan", "total": "inf", "value": 10**400}) is None
    assert goal_value({"revenue": float("inf"), "total": "-Infinity", "value": 5}) == 5.0
    assert goal_value({}) is None


def _lead_in(arm: str, prefix: str = "u") -> str:
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if assign_arm("cart-copy-test", f"{prefix}{i}", 0.1, [("a", 50), ("b", 50)]) == arm
    )


def test_every_action_carries_its_arm_and_holdout_is_held_out() -> None:
    ruleset = rules(RULES)
    leads = [_lead_in(HOLDOUT), _lead_in("a"), _lead_in("b")]
    events = [track("Product Added", i, lead) for i, lead in enumerate(leads)]
    updates: list[dict[str, Any]] = []
    actions = {a.lead_id: a for a in simulate(ruleset, events, updates=updates)}
    held, a, b = (actions[lead] for lead in leads)
    assert (held.experiment, held.variant, held.held_out) == ("cart-copy-test", "holdout", True)
    assert held.template == "cart_a" and held.payload == {"tone": "plain"}
    assert (a.variant, a.held_out, a.template) == ("a", False, "cart_a")
    assert (b.variant, b.held_out, b.template, b.payload) == ("b", False, "cart_b", {"tone": "plain", "coupon": "X"})
    for action in (held, a, b):
        doc = action.to_json()
        assert (doc["experiment"], doc["variant"], doc["held_out"]) == (
            action.experiment,
            action.variant,
            action.held_out,
        )
        assert Action.from_json(action.to_bytes()) == action
    assigned = [u for u in updates if u["kind"] == "experiment"]
    assert [(u["lead_id"], u["variant"], u["event"]) for u in assigned] == [
        (leads[0], "holdout", "assigned"),
        (leads[1], "a", "assigned"),
        (leads[2], "b", "assigned"),
    ]
    first = assigned[0]
    assert first == {
        "kind": "experiment",
        "event": "assigned",
        "lead_id": leads[0],
        "at_ms": at(30),
        "experiment": "cart-copy-test",
        "variant": "holdout",
        "rule": "cart_abandoned",
        "message_id": "pro-0-" + leads[0],
    }


def test_actions_of_rules_without_experiments_are_unchanged() -> None:
    plain = rules(RULES.split("    experiment:")[0])
    (action,) = simulate(plain, [track("Product Added", 0)])
    assert action.experiment is None and "experiment" not in action.to_json() and "held_out" not in action.to_json()


def test_goal_events_within_the_window_are_reported_with_their_value() -> None:
    ruleset = rules(RULES)
    lead = _lead_in("b")
    events = [
        track("Product Added", 0, lead),
        track("Order Completed", 40, lead, revenue=25.0),  # after the reminder (30 min), within 2h
        track("Order Completed", 100, lead, total=10),
        track("Order Completed", 200, lead, value=1),  # past goal_within (2h after 30 min)
    ]
    updates: list[dict[str, Any]] = []
    simulate(ruleset, events, updates=updates)
    goals = [u for u in updates if u["kind"] == "experiment" and u["event"] == "goal"]
    assert [(g["at_ms"], g["value"], g["variant"], g["message_id"]) for g in goals] == [
        (at(40), 25.0, "b", "ord-40-" + lead),
        (at(100), 10.0, "b", "ord-100-" + lead),
    ]


def test_memory_is_bounded_dropped_after_the_window_and_reassigned_later() -> None:
    ruleset = rules(RULES)
    lead = _lead_in("a")
    result = evaluate(ruleset, None, track("Product Added", 0, lead))
    result = evaluate(ruleset, result.state, Tick(at(30)))
    assert [u["event"] for u in result.updates] == ["assigned"]
    state = result.state
    assert len(state.experiments) == 1 and state.size() < 400
    assert LeadState.from_bytes(state.to_bytes()) == state
    # within the window: a second firing is not a second assignment
    again = evaluate(ruleset, state, track("Product Added", 60, lead, mid="p2"))
    again = evaluate(ruleset, again.state, Tick(at(90)))
    assert len(again.actions) == 1 and not [u for u in again.updates if u["kind"] == "experiment"]
    # past the window the entry is dropped; a later firing is a new assignment of the same arm
    later = evaluate(ruleset, again.state, Tick(at(30) + 2 * 60 * MIN + 1))
    assert later.state.experiments == {}
    later = evaluate(ruleset, later.state, track("Product Added", 300, lead, mid="p3"))
    later = evaluate(ruleset, later.state, Tick(at(330)))
    assert [(u["event"], u["variant"]) for u in later.updates] == [("assigned", "a")]


def test_the_arm_is_the_lead_id_the_state_is_kept_under_after_a_merge() -> None:
    ruleset = rules(RULES)
    anon, known = _lead_in("b", "anon"), _lead_in("a", "known")
    anon_state = evaluate(ruleset, None, track("Product Added", 0, anon)).state
    anon_state = evaluate(ruleset, anon_state, Tick(at(30))).state
    assert anon_state.experiments
    merged = LeadState(known).merge(anon_state, ruleset)
    assert merged.lead_id == known and merged.experiments == {}
    result = evaluate(ruleset, merged, track("Product Added", 40, known, mid="k1"))
    result = evaluate(ruleset, result.state, Tick(at(70)))
    assert [(a.lead_id, a.variant) for a in result.actions] == [(known, "a")]


def test_the_default_goal_is_the_rules_unless() -> None:
    ruleset = rules(RULES.replace('      goal: {event: "Order Completed"}\n', ""))
    lead = _lead_in("a")
    updates: list[dict[str, Any]] = []
    simulate(ruleset, [track("Product Added", 0, lead), track("Order Completed", 45, lead)], updates=updates)
    assert [u["event"] for u in updates if u["kind"] == "experiment"] == ["assigned", "goal"]


def test_an_experiment_without_variants_has_the_treatment_arm() -> None:
    ruleset = rules(RULES.split("      variants:")[0] + "      goal_within: 1d\n")
    arms = {a.variant for a in simulate(ruleset, [track("Product Added", i, f"l{i}") for i in range(60)])}
    assert arms == {"treatment", "holdout"}


JOURNEY = """
rules:
  - id: welcome
    kind: journey
    entry: {event: Signed Up}
    exit_on: {event: Subscription Started}
    steps:
      - {id: hello, send: {connector: email, template: hello}}
      - id: ab
        split:
          experiment: welcome-path
          holdout: 20%
          variants:
            - {id: short, weight: 1, goto: tip}
            - {id: long, weight: 1, goto: wait_long}
      - {id: wait_long, wait: 2d}
      - {id: tip, send: {connector: email, template: tip}}
      - {id: pause, wait: 1d}
      - {id: nudge, send: {connector: email, template: nudge}}
"""


def _journey_lead(arm: str) -> str:
    return next(
        f"j{i}" for i in range(10_000) if assign_arm("welcome-path", f"j{i}", 0.2, [("short", 1), ("long", 1)]) == arm
    )


def test_a_split_sends_each_arm_down_its_path_and_tags_the_sends_after_it() -> None:
    ruleset = rules(JOURNEY)
    leads = {arm: _journey_lead(arm) for arm in ("holdout", "short", "long")}
    updates: list[dict[str, Any]] = []
    actions = simulate(ruleset, [track("Signed Up", 0, lead) for lead in leads.values()], updates=updates)
    by_lead: dict[str, list[tuple[str | None, str | None, str | None]]] = {}
    for action in actions:
        by_lead.setdefault(action.lead_id, []).append((action.step, action.experiment, action.variant))
    assert by_lead[leads["short"]] == [
        ("hello", None, None),
        ("tip", "welcome-path", "short"),
        ("nudge", "welcome-path", "short"),  # after a wait: the arm comes from the lead's memory
    ]
    assert by_lead[leads["long"]] == [
        ("hello", None, None),
        ("tip", "welcome-path", "long"),
        ("nudge", "welcome-path", "long"),
    ]
    assert by_lead[leads["holdout"]] == [("hello", None, None)]  # no holdout_goto: the holdout arm leaves
    exits = [u for u in updates if u["kind"] == "journey" and u["event"] == "exited"]
    assert [(u["lead_id"], u["step"], u["reason"]) for u in exits] == [(leads["holdout"], "ab", "held_out")]
    assigned = {u["lead_id"]: u for u in updates if u["kind"] == "experiment"}
    assert {lead: u["variant"] for lead, u in assigned.items()} == {lead: arm for arm, lead in leads.items()}
    assert assigned[leads["long"]]["rule"] == "welcome"


def test_a_split_holdout_goto_follows_a_path_whose_sends_are_held_out() -> None:
    ruleset = rules(
        JOURNEY.replace("          holdout: 20%\n", "          holdout: 20%\n          holdout_goto: tip\n")
    )
    lead = _journey_lead("holdout")
    updates: list[dict[str, Any]] = []
    actions = simulate(
        ruleset, [track("Signed Up", 0, lead), track("Subscription Started", 3000, lead)], updates=updates
    )
    assert [(a.step, a.variant, a.held_out) for a in actions] == [
        ("hello", None, False),
        ("tip", "holdout", True),
        ("nudge", "holdout", True),
    ]
    goals = [u for u in updates if u["kind"] == "experiment" and u["event"] == "goal"]
    assert [(g["variant"], g["rule"]) for g in goals] == [("holdout", "welcome")]  # the default goal: exit_on


def test_the_memory_stays_one_entry_per_experiment_over_a_long_stream() -> None:
    """A year of daily carts, orders and reminders for one lead: at most one entry per experiment, state small."""
    ruleset = rules(RULES + JOURNEY.replace("rules:\n", ""))
    lead = _lead_in("b")
    state = None
    largest = 0
    for day in range(365):
        base = day * 24 * 60
        for event in (
            track("Signed Up", base, lead, mid=f"s{day}"),
            track("Product Added", base + 1, lead, mid=f"p{day}"),
            track("Order Completed", base + 45, lead, mid=f"o{day}", revenue=5),
        ):
            result = evaluate(ruleset, state, event)
            state = result.state
            for deadline in result.deadlines:
                if deadline < at(base + 60):
                    state = evaluate(ruleset, state, Tick(deadline)).state
            assert len(state.experiments) <= 2
            largest = max(largest, state.size())
    assert largest < 1024, largest


def test_a_journey_reentered_within_the_window_still_tags_its_later_sends() -> None:
    ruleset = rules(JOURNEY.replace("    steps:", "    re_entry: after_exit\n    steps:"))
    lead = _journey_lead("long")
    events = [
        track("Signed Up", 0, lead),
        track("Subscription Started", 10, lead),
        track("Signed Up", 60, lead, mid="s2"),
    ]
    actions = simulate(ruleset, events)
    assert [(a.step, a.variant) for a in actions] == [
        ("hello", None),
        ("hello", None),
        ("tip", "long"),
        ("nudge", "long"),
    ]


def test_a_journey_in_progress_moving_to_the_identified_lead_keeps_its_path_arm() -> None:
    ruleset = rules(JOURNEY)
    anon = _journey_lead("long")
    known = next(
        f"k{i}" for i in range(1000) if assign_arm("welcome-path", f"k{i}", 0.2, [("short", 1), ("long", 1)]) == "short"
    )
    state = evaluate(ruleset, None, track("Signed Up", 0, anon)).state  # waits at wait_long (2 days)
    merged = LeadState(known).merge(state, ruleset)
    assert merged.experiments == state.experiments
    later = evaluate(ruleset, merged, Tick(at(3 * 24 * 60)))
    assert [(a.lead_id, a.step, a.variant) for a in later.actions] == [(known, "tip", "long"), (known, "nudge", "long")]


def test_replays_and_interleavings_give_the_same_arms_and_records() -> None:
    import random

    ruleset = rules(RULES + JOURNEY.replace("rules:\n", ""))
    events = []
    for i in range(30):
        lead = f"r{i}"
        events += [track("Product Added", i % 3, lead), track("Signed Up", 0.5, lead)]  # leads share timestamps
        if i % 3 == 0:
            events.append(track("Order Completed", 50, lead, revenue=i))
    runs = []
    for seed in range(3):
        shuffled = sorted(events, key=lambda e: (e.timestamp_ms, random.Random(seed).random()))
        updates: list[dict[str, Any]] = []
        actions = simulate(ruleset, shuffled, updates=updates)
        runs.append(([a.to_bytes() for a in actions], updates))
    assert runs[0] == runs[1] == runs[2]
    assert {orjson_loads(b)["variant"] for b in runs[0][0] if b"cart_abandoned" in b} == {"holdout", "a", "b"}


def orjson_loads(value: bytes) -> dict[str, Any]:
    import orjson

    doc: dict[str, Any] = orjson.loads(value)
    return doc


def test_amounts_and_rule_comparisons_read_numbers_alike() -> None:
    """`money` reads amounts with the rule matchers' `comparable_number`: the same values count, and an int too
    large for a float is no number to either (it used to raise OverflowError in the matchers)."""
    for value in (12, 12.5, "40", "-3.5", True, None, "nan", "inf", float("nan"), 10**400, "abc", [1], {"a": 1}):
        number = comparable_number(value)
        assert money(value) == (None if number is None else float(number)), value
    assert comparable_number(10**400) is None and money(10**400) is None
    assert comparable_number(2**63 + 1) == 2**63 + 1, "an int stays exact for eq on numeric ids"
