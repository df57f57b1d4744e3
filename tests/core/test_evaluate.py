"""Semantics of `evaluate` pinned by examples: deadlines, ticks, gates, actions, purity."""

from __future__ import annotations

from engine.core import LeadState, Tick, evaluate, make_action_id
from tests.core.helpers import CART, MIN, at, identify, page, rules, run, track


def test_a_deadline_before_the_next_event_fires_first_with_fired_at_the_deadline() -> None:
    _, actions = run(CART, [track("Product Added", 0, price=5, product_id="p"), track("Page Viewed", 45)])
    [action] = actions
    assert action.fired_at_ms == at(30)
    assert action.trigger_time_ms == at(30)
    assert action.trigger == ("pro-0-u1",)
    assert action.template == "cart_reminder" and action.payload == {"subject": "Hi"}
    assert action.priority == 4 and action.on_cap == "drop" and action.marketing is True
    assert action.action_id == make_action_id("cart", CART.rules[0].version, "u1", f"{at(0)}:pro-0-u1")
    assert "not followed by 'Order Completed' within 30m" in action.explanation
    assert action.context["cart"]["value"] == 5


def test_deadlines_list_every_pending_deadline_and_ticks_fire_at_or_after_them() -> None:
    first = evaluate(CART, None, track("Product Added", 0))
    assert first.deadlines == [at(30)] and first.actions == []
    moved = evaluate(CART, first.state, track("Product Added", 10))
    assert moved.deadlines == [at(40)]
    early = evaluate(CART, moved.state, Tick(at(39)))
    assert early.actions == [] and early.deadlines == [at(40)]
    due = evaluate(CART, moved.state, Tick(at(40)))
    assert [a.fired_at_ms for a in due.actions] == [at(40)] and due.deadlines == []


def test_an_event_exactly_at_the_deadline_is_applied_before_the_deadline_fires() -> None:
    state, actions = run(CART, [track("Product Added", 0), track("Order Completed", 30)])
    assert actions == [] and evaluate(CART, state, Tick(at(100))).actions == []


def test_now_ms_fires_deadlines_after_applying_the_event() -> None:
    result = evaluate(CART, None, track("Product Added", 0), now_ms=at(31))
    assert [a.fired_at_ms for a in result.actions] == [at(30)] and result.deadlines == []


def test_evaluate_never_mutates_the_state_it_was_given() -> None:
    state = evaluate(CART, None, track("Product Added", 0)).state
    before = state.to_bytes()
    evaluate(CART, state, track("Product Added", 5))
    evaluate(CART, state, Tick(at(60)))
    assert state.to_bytes() == before
    assert LeadState.from_bytes(before) == state


def test_restart_false_keeps_the_first_deadline_and_min_matches_needs_repeats() -> None:
    ruleset = rules(
        """
rules:
  - {id: fixed, kind: absence, when: {event: A}, within: 10m, restart: false, action: {connector: log}}
  - {id: twice, kind: absence, when: {event: A}, within: 10m, min_matches: 2, action: {connector: log}}
"""
    )
    _, actions = run(ruleset, [track("A", 0), track("A", 5), Tick(at(60))])
    assert [(a.rule, a.fired_at_ms) for a in actions] == [("fixed", at(10)), ("twice", at(15))]
    _, actions = run(ruleset, [track("A", 0), Tick(at(60))])
    assert [a.rule for a in actions] == ["fixed"]


def test_threshold_count_and_default_cooldown_equal_to_the_window() -> None:
    ruleset = rules(
        """
rules:
  - {id: hot, kind: threshold, match: {type: page}, count: 2, within: 10m, action: {connector: slack}}
"""
    )
    _, actions = run(ruleset, [page("/a", m) for m in (0, 1, 2, 10, 11, 12)])
    assert [a.fired_at_ms for a in actions] == [at(1), at(11)]
    assert actions[0].marketing is False  # slack is a sales alert, not marketing


def test_threshold_sum_of_a_property() -> None:
    ruleset = rules(
        """
rules:
  - id: big_spender
    kind: threshold
    match: {event: Order Completed}
    sum: {field: properties.total, gte: 100}
    within: 1d
    action: {connector: crm}
"""
    )
    events = [track("Order Completed", 0, total=60), track("Order Completed", 60, total="50.5")]
    _, actions = run(ruleset, [*events, track("Order Completed", 90, total="n/a")])
    [action] = actions
    assert action.fired_at_ms == at(60) and action.context["trigger"]["sum"] == 110.5


SEQ = rules(
    """
rules:
  - id: demo_intent
    kind: sequence
    steps:
      - {type: page, where: {properties.path: {prefix: /pricing}}}
      - {event: Demo Requested}
      - {event: Signed Up}
    within: 1h
    action: {connector: slack}
"""
)


def test_sequence_fires_when_all_steps_happen_in_order_within_the_window() -> None:
    _, actions = run(SEQ, [page("/pricing", 0), track("Demo Requested", 10), track("Signed Up", 50)])
    [action] = actions
    assert action.trigger == ("page-0-u1", "dem-10-u1", "sig-50-u1") and action.fired_at_ms == at(50)
    _, late = run(SEQ, [page("/pricing", 0), track("Demo Requested", 10), track("Signed Up", 61)])
    assert late == []
    _, wrong_order = run(SEQ, [track("Demo Requested", 0), page("/pricing", 1), track("Signed Up", 2)])
    assert wrong_order == []


def test_sequence_keeps_the_latest_start_so_a_later_first_step_can_still_complete() -> None:
    items = [page("/pricing", 0), page("/pricing", 50), track("Demo Requested", 70), track("Signed Up", 100)]
    _, actions = run(SEQ, items)
    assert [a.trigger[0] for a in actions] == ["page-50-u1"]


SCORE = rules(
    """
rules:
  - id: score
    kind: score
    half_life: 1d
    points:
      - {match: {event: Demo Requested}, points: 30}
      - {match: {type: page}, points: 5, daily_cap: 10}
      - {match: {event: Unsubscribed}, points: -50}
    stages: {lead: 10, mql: 40}
    thresholds:
      - {at: 40, name: mql, action: {connector: slack, template: mql}}
"""
)


def test_score_points_caps_decay_crossings_and_monotone_stages() -> None:
    items = [page("/a", 0), page("/b", 0, mid="b"), page("/c", 0, mid="c"), track("Demo Requested", 0)]
    state, actions = run(SCORE, items)
    [mql] = actions
    assert mql.context["score"] == 40 and mql.context["stage"] == "mql" and mql.template == "mql"
    assert mql.context["trigger"] == {
        "threshold": "mql",
        "at": 40,
        "score": 40,
        "previous": 10,
        "stage": "mql",
    }
    # a day later the score has halved; the stage stays; climbing back over 40 fires again
    state, actions = run(SCORE, [track("Unsubscribed", 24 * 60)], state)
    assert actions == [] and state.slot(SCORE.rules[0]).value == -30 and state.slot(SCORE.rules[0]).stage == "mql"
    state, actions = run(SCORE, [track("Demo Requested", 24 * 60 + 1), track("Demo Requested", 24 * 60 + 2)], state)
    assert [a.template for a in actions] == []  # -30 + 60 = 30 (just under 40): no crossing yet
    state, actions = run(SCORE, [track("Demo Requested", 24 * 60 + 3)], state)
    assert [a.template for a in actions] == ["mql"]


def test_gates_cooldown_max_per_lead_and_if_condition() -> None:
    ruleset = rules(
        """
segments:
  big: {cart.value: {gte: 100}}
rules:
  - id: capped
    kind: threshold
    match: {event: Ping}
    count: 1
    within: 1m
    cooldown: 0s
    max_per_lead: 2
    per: 1d
    action: {connector: log}
  - id: once
    kind: threshold
    match: {event: Ping}
    count: 1
    within: 1m
    cooldown: 0s
    max_per_lead: 1
    action: {connector: log}
  - id: gated
    kind: absence
    when: {event: Product Added}
    within: 10m
    if: {segment: big, traits.plan: {ne: enterprise}}
    action: {connector: email}
"""
    )
    _, actions = run(ruleset, [track("Ping", m) for m in (0, 1, 2, 3)] + [track("Ping", 24 * 60)])
    capped = [a.fired_at_ms for a in actions if a.rule == "capped"]
    assert capped == [at(0), at(1), at(24 * 60)]  # two a day (`per: 1d`)
    assert [a.fired_at_ms for a in actions if a.rule == "once"] == [at(0)]  # without `per`: once, ever
    _, small = run(ruleset, [track("Product Added", 0, product_id="p", price=20), Tick(at(60))])
    assert [a.rule for a in small] == []
    _, big = run(ruleset, [track("Product Added", 0, product_id="p", price=20, quantity=5), Tick(at(60))])
    assert [a.rule for a in big] == ["gated"]
    _, vip = run(ruleset, [identify(0, plan="enterprise"), track("Product Added", 1, product_id="p", price=500)])
    assert vip == []


def test_exit_on_clears_pending_state_and_lead_paths_read_derived_facts() -> None:
    ruleset = rules(
        """
rules:
  - id: nudge
    kind: absence
    when: {event: Product Added, where: {lead.cart.count: {gte: 2}}}
    exit_on: {event: Unsubscribed}
    within: 10m
    action: {connector: email}
"""
    )
    state, _ = run(ruleset, [track("Product Added", 0, product_id="a")])
    assert evaluate(ruleset, state, Tick(at(60))).deadlines == []  # one item: not matched
    state, _ = run(ruleset, [track("Product Added", 1, product_id="b")], state)
    assert evaluate(ruleset, state, Tick(at(5))).deadlines == [at(11)]
    state, _ = run(ruleset, [track("Unsubscribed", 2)], state)
    assert evaluate(ruleset, state, Tick(at(60))).actions == []


def test_derived_facts_cart_session_time_on_page_source() -> None:
    state, _ = run(
        CART,
        [
            page("/", 0, context={"campaign": {"source": "newsletter", "name": "spring"}}),
            page("/shoes", 2),
            track("Product Added", 3, product_id="p1", name="Shoe", price=50, quantity=2),
            track("Product Added", 4, product_id="p2", name="Sock", price=5),
            track("Product Removed", 5, product_id="p1", quantity=1),
            page("/cart", 90, properties={"utm_source": "ads"}),
        ],
    )
    from engine.core import build_view

    view = build_view(CART, state, at(90))
    assert view["cart"]["value"] == 55 and view["cart"]["count"] == 2
    assert [i["name"] for i in view["cart"]["items"]] == ["Shoe", "Sock"]
    assert view["source"] == "newsletter" and view["campaign"] == "spring"  # first touch
    assert view["pages_in_session"] == 1  # 85 minutes of silence started a new session
    assert view["time_on_page_ms"] is None and view["last_page"]["path"] == "/cart"
    state, _ = run(CART, [page("/checkout", 92)], state)
    assert build_view(CART, state, at(92))["time_on_page_ms"] == 2 * MIN
    state, _ = run(CART, [track("Order Completed", 93)], state)
    assert build_view(CART, state, at(93))["cart"]["items"] == []


def test_identity_merge_folds_the_anonymous_lead_into_the_known_one() -> None:
    anonymous, _ = run(SCORE, [page("/a", 2, lead="anon"), page("/b", 2, lead="anon", mid="b")])
    known, _ = run(SCORE, [track("Demo Requested", 2, lead="u1"), identify(3, lead="u1", email="u@x.io")])
    merged = known.merge(anonymous, SCORE)
    score = SCORE.rules[0]
    assert merged.lead_id == "u1" and merged.slot(score).value == 40
    assert merged.facts["fs"] == at(2) and merged.facts["tr"]["email"] == "u@x.io"
    assert known.merge(anonymous).slot(score).value == 30  # without the rule set the known lead's slot wins


def test_slots_of_removed_rules_are_dropped() -> None:
    state, _ = run(CART, [track("Product Added", 0)])
    other = rules("rules:\n  - {id: x, kind: absence, when: {event: A}, within: 1m, action: {connector: log}}")
    result = evaluate(other, state, Tick(at(1)))
    assert result.state.rules == {} and result.deadlines == []
