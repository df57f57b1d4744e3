"""`kind: journey` in the core: the issue's semantics 1-6, state, records, ids, edits, merges and guards."""

from __future__ import annotations

import orjson
import pytest

from engine.core import Action, LeadState, RuleSet, Tick, evaluate, simulate
from engine.core.kinds.journey import STEPS_WITHOUT_WAIT, JourneyLogic, JourneySlot, JourneyStep
from engine.core.ruleset import ActionSpec, Rule
from engine.events import Event
from tests.core.helpers import at, identify, rules, track

HOUR = 60  # minutes

CART_RESCUE = """
rules:
  - id: cart_rescue
    kind: journey
    entry: {event: "Product Added"}
    exit_on: {event: "Order Completed"}
    re_entry: after_exit
    steps:
      - {id: w1, wait: 1h}
      - {id: r1, send: {connector: email, template: cart_reminder}}
      - {id: w2, wait_for: {event: "Product Viewed", within: 1d}, then: r3, else: r2}
      - {id: r2, send: {connector: email, template: cart_discount}}
      - {id: stop, end: true}
      - {id: r3, send: {connector: slack, template: hot_lead}}
"""
CART = rules(CART_RESCUE)
RESCUE = CART.rules[0]


def sim(ruleset: RuleSet, events: list[Event], flush: bool = True) -> tuple[list[Action], list[dict]]:
    updates: list[dict] = []
    actions = simulate(ruleset, events, flush, updates=updates)
    return actions, [u for u in updates if u["kind"] == "journey"]


def sends(actions: list[Action]) -> list[tuple[str, float, str | None]]:
    return [(a.lead_id, (a.fired_at_ms - at(0)) / 60_000, a.step) for a in actions]


def trail(records: list[dict]) -> list[tuple]:
    return [(r["lead_id"], (r["at_ms"] - at(0)) / 60_000, r["event"], r["step"], r["reason"]) for r in records]


def test_timeout_path_wait_send_wait_for_else_send_end() -> None:
    actions, records = sim(CART, [track("Product Added", 0, mid="a1")])
    assert sends(actions) == [("u1", 60, "r1"), ("u1", 60 + 24 * HOUR, "r2")]
    assert [a.template for a in actions] == ["cart_reminder", "cart_discount"]
    assert trail(records) == [
        ("u1", 0, "entered", None, None),
        ("u1", 0, "reached", "w1", None),
        ("u1", 60, "reached", "r1", None),
        ("u1", 60, "reached", "w2", None),
        ("u1", 60 + 24 * HOUR, "reached", "r2", None),
        ("u1", 60 + 24 * HOUR, "reached", "stop", None),
        ("u1", 60 + 24 * HOUR, "completed", "stop", None),
    ]
    assert all(r["entry_ms"] == at(0) and r["journey"] == "cart_rescue" for r in records)
    assert [r["message_id"] for r in records] == ["a1", "a1", None, None, None, None, None]


def test_then_path_at_the_matching_event_s_time_and_running_off_the_end_completes() -> None:
    actions, records = sim(CART, [track("Product Added", 0, mid="a1"), track("Product Viewed", 90, mid="v1")])
    assert sends(actions) == [("u1", 60, "r1"), ("u1", 90, "r3")]
    r3 = actions[1]
    assert r3.connector == "slack" and not r3.marketing and actions[0].marketing  # per send
    assert r3.trigger == ("a1", "v1") and actions[0].trigger == ("a1",)
    assert trail(records)[-2:] == [("u1", 90, "reached", "r3", None), ("u1", 90, "completed", "r3", None)]


def test_an_event_exactly_at_the_wait_for_deadline_still_counts_as_in_time() -> None:
    events = [track("Product Added", 0), track("Product Viewed", 60 + 24 * HOUR)]
    assert [a.step for a in sim(CART, events)[0]] == ["r1", "r3"]
    late = [track("Product Added", 0), track("Product Viewed", 60 + 24 * HOUR + 0.001)]
    assert [a.step for a in sim(CART, late)[0]] == ["r1", "r2"]


def test_deadlines_before_an_event_fire_first_then_the_exit_leaves_at_once() -> None:
    events = [track("Product Added", 0), track("Order Completed", 2 * HOUR, mid="o1")]
    actions, records = sim(CART, events)
    assert sends(actions) == [("u1", 60, "r1")]  # the wait ended before the order; nothing after it
    assert trail(records)[-1] == ("u1", 120, "exited", "w2", "exit_on")
    assert records[-1]["message_id"] == "o1"


def test_exit_mid_wait_sends_nothing_more_and_publishes_converted() -> None:
    state = evaluate(CART, None, track("Product Added", 0)).state
    result = evaluate(CART, state, track("Order Completed", 30, mid="o1"))
    assert result.deadlines == [] and result.state.rules == {}  # no goal: nothing is kept
    kinds = [(u["kind"], u.get("journey") or u.get("rule"), u["message_id"]) for u in result.updates]
    assert kinds == [("journey", "cart_rescue", "o1"), ("converted", "cart_rescue", "o1")]
    assert evaluate(CART, result.state, Tick(at(10 * 24 * HOUR))).actions == []


def test_exit_on_wins_over_a_wait_for_match_on_the_same_event() -> None:
    ruleset = rules(CART_RESCUE.replace('exit_on: {event: "Order Completed"}', 'exit_on: {event: "Product Viewed"}'))
    actions, records = sim(ruleset, [track("Product Added", 0), track("Product Viewed", 90)])
    assert [a.step for a in actions] == ["r1"]
    assert trail(records)[-1] == ("u1", 90, "exited", "w2", "exit_on")


def test_entry_events_are_ignored_in_the_journey_and_enter_again_after_it_ended() -> None:
    events = [track("Product Added", 0, mid="a1"), track("Product Added", 30, mid="a2")]
    events += [track("Product Added", 2 * 24 * HOUR, mid="a3")]
    actions, records = sim(CART, events)
    assert [(a.step, a.trigger) for a in actions] == [
        ("r1", ("a1",)),
        ("r2", ("a1",)),
        ("r1", ("a3",)),
        ("r2", ("a3",)),
    ]
    assert [r["event"] for r in records].count("entered") == 2


def test_re_entry_never_allows_one_entry_per_lead_ever() -> None:
    ruleset = rules(CART_RESCUE.replace("re_entry: after_exit", "re_entry: never"))
    events = [track("Product Added", 0), track("Product Added", 3 * 24 * HOUR), track("Product Added", 90 * 24 * 60)]
    actions, _ = sim(ruleset, events)
    assert [a.step for a in actions] == ["r1", "r2"]
    state = evaluate(ruleset, None, track("Product Added", 0)).state
    state = evaluate(ruleset, state, track("Order Completed", 1)).state
    assert state.slot(ruleset.rules[0]) == JourneySlot.of(at(0), "pro-0-u1", None, at(1), None, 0)  # the marker
    assert evaluate(ruleset, state, track("Product Added", 5)).state.slot(ruleset.rules[0]).step is None


def test_an_event_that_ends_the_journey_does_not_also_enter_it_again() -> None:
    ruleset = rules(
        """
rules:
  - id: ping
    kind: journey
    entry: {event: [Ping, Pong]}
    exit_on: {event: Ping}
    steps:
      - {id: hello, send: {connector: log}}
      - {id: wait_pong, wait_for: {event: Pong, within: 1h}, then: done}
      - {id: done, end: true}
"""
    )
    actions, records = sim(ruleset, [track("Ping", 0), track("Ping", 5), track("Ping", 10)])
    assert [r["event"] for r in records if r["event"] in ("entered", "exited")] == ["entered", "exited", "entered"]
    assert len(actions) == 2
    actions, records = sim(ruleset, [track("Pong", 0), track("Pong", 5), track("Pong", 10)])
    assert [r["event"] for r in records if r["event"] in ("entered", "completed")] == [
        "entered",
        "completed",  # the Pong at 5 completed it (then: done) and did not enter again
        "entered",
        "completed",  # (the flush: no Pong within the hour)
    ]


def test_ticks_fire_deadlines_at_or_before_now() -> None:
    state = evaluate(CART, None, track("Product Added", 0)).state
    assert evaluate(CART, state, Tick(at(60) - 1)).actions == []
    result = evaluate(CART, state, Tick(at(60)))
    assert [a.step for a in result.actions] == ["r1"] and result.deadlines == [at(60 + 24 * HOUR)]
    later = evaluate(CART, state, Tick(at(10 * 24 * HOUR)))  # one tick fires the whole chain, each at its time
    assert sends(later.actions) == [("u1", 60, "r1"), ("u1", 60 + 24 * HOUR, "r2")]


def test_the_rule_s_if_applies_at_entry_and_common_gates_do_not_apply_to_sends() -> None:
    ruleset = rules(
        """
rules:
  - id: trial
    kind: journey
    entry: {event: Signed Up}
    if: {traits.plan: trial}
    steps:
      - {id: hello, send: {connector: email, template: welcome}}
      - {id: day1, wait: 1d}
      - {id: again, send: {connector: email, template: tip}}
"""
    )
    stopped = evaluate(ruleset, None, track("Signed Up", 0))
    assert stopped.actions == [] and stopped.suppressed == [("trial", "condition")] and not stopped.updates
    state = evaluate(ruleset, None, identify(0, plan="trial")).state
    state = evaluate(ruleset, state, track("Signed Up", 1)).state
    state = evaluate(ruleset, state, identify(2, plan="pro")).state  # no longer matches `if:`: sends go on
    result = evaluate(ruleset, state, Tick(at(1 + 24 * HOUR)))
    assert [a.step for a in result.actions] == ["again"] and not result.state.gates


def test_branches_read_the_lead_view_when_reached_and_a_send_carries_it() -> None:
    ruleset = rules(
        """
segments:
  paying: {traits.plan: [pro, business]}
rules:
  - id: onboarding
    kind: journey
    entry: {event: Signed Up}
    steps:
      - {id: wait_a_day, wait: 1d}
      - {id: paid, branch: [{if: {segment: paying}, goto: upsell}, {if: {score: {gte: 10}}, goto: engaged}]}
      - {id: nudge, send: {connector: email, template: nudge}}
      - {id: stop, end: true}
      - {id: upsell, send: {connector: email, template: upsell}}
      - {id: done, end: true}
      - {id: engaged, send: {connector: email, template: engaged}}
  - id: score
    kind: score
    points: [{match: {event: Demo Requested}, points: 10}]
    action: {connector: log}
"""
    )

    def path(*events: Event) -> list[str | None]:
        return [a.template for a in simulate(ruleset, [track("Signed Up", 0), *events]) if a.rule == "onboarding"]

    assert path() == ["nudge"]
    assert path(identify(HOUR, plan="pro")) == ["upsell"]  # the plan changed during the wait
    assert path(track("Demo Requested", HOUR)) == ["engaged"]
    assert path(identify(25 * HOUR, plan="pro")) == ["nudge"]  # too late: the branch was taken at 1d
    upsell = simulate(ruleset, [track("Signed Up", 0), identify(HOUR, plan="pro")])[0]
    assert upsell.context["traits"]["plan"] == "pro" and upsell.context["trigger"]["step"] == "upsell"
    assert "branch paid: condition 1 held" in upsell.explanation


def test_action_ids_are_deterministic_and_a_send_passed_again_gets_a_new_id() -> None:
    ruleset = rules(
        """
rules:
  - id: digest
    kind: journey
    entry: {event: Subscribed}
    exit_on: {event: Unsubscribed}
    steps:
      - {id: week, wait: 7d}
      - {id: mail, send: {connector: email, template: digest}}
      - {id: again, goto: week}
"""
    )
    events = [track("Subscribed", 0), track("Unsubscribed", 30 * 24 * HOUR)]
    first = simulate(ruleset, events)
    assert [a.step for a in first] == ["mail"] * 4  # days 7, 14, 21, 28
    assert len({a.action_id for a in first}) == 4
    assert [a.action_id for a in simulate(rules(_DIGEST), events)] == [a.action_id for a in first]


_DIGEST = """
rules:
  - id: digest
    kind: journey
    entry: {event: Subscribed}      # the same journey, written differently: same version, same ids
    exit_on: {event: Unsubscribed}
    steps:
      - id: week
        wait: 7d
      - {id: mail, send: {template: digest, connector: email}}
      - {id: again, goto: week}
"""


def test_the_flush_of_a_journey_looping_forever_is_bounded() -> None:
    ruleset = rules(_DIGEST)
    actions = simulate(ruleset, [track("Subscribed", 0)])
    assert len(actions) == 52  # weekly, up to 366 days after the last event
    assert len(simulate(ruleset, [track("Subscribed", 0)], flush_ticks=5)) == 5
    assert simulate(ruleset, [track("Subscribed", 0)], flush=False) == []


def test_goal_counts_once_per_entry_within_its_window_also_after_the_journey_ended() -> None:
    ruleset = rules(
        CART_RESCUE.replace("re_entry: after_exit", 'goal: {event: "Order Completed"}\n    goal_within: 3d')
    )
    rescue = ruleset.rules[0]
    days = 24 * HOUR
    events = [track("Product Added", 0), track("Order Completed", 2 * days), track("Order Completed", 2 * days + 1)]
    _, records = sim(ruleset, events)
    assert [r["event"] for r in records].count("goal") == 1
    state = evaluate(ruleset, None, track("Product Added", 0)).state
    state = evaluate(ruleset, state, Tick(at(2 * days))).state  # completed at 1d 1h; the goal window stays
    assert state.slot(rescue) == JourneySlot.of(at(0), "pro-0-u1", None, at(60 + days), at(3 * days), 0)
    result = evaluate(ruleset, state, track("Order Completed", 3 * days))  # at the window's end: still in time
    assert [(u["event"], u["step"]) for u in result.updates if u["kind"] == "journey"] == [("goal", None)]
    assert result.state.rules == {} and result.deadlines == []
    closed = evaluate(ruleset, state, Tick(at(3 * days)))
    assert closed.state.rules == {} and closed.updates == []  # the window closed: the slot is gone


def test_the_slot_is_a_compact_array_and_round_trips() -> None:
    state = evaluate(CART, None, track("Product Added", 0, mid="a1")).state
    assert state.to_json()["r"] == {RESCUE.key: [at(0), "a1", "w1", 0, 3_600_000, 0]}  # times after entry
    again = LeadState.from_bytes(state.to_bytes())
    assert (
        evaluate(CART, again, Tick(at(60))).actions[0].action_id
        == evaluate(CART, state, Tick(at(60))).actions[0].action_id
    )
    with pytest.raises(ValueError, match="not a journey slot"):
        RESCUE.logic.load([1, 2])
    long_id = "x" * 60
    kept = evaluate(CART, None, track("Product Added", 0, mid=long_id)).state.slot(RESCUE)
    assert kept.entry_id == "~" + "x" * 16


def test_action_json_carries_step_only_for_journeys() -> None:
    action = simulate(CART, [track("Product Added", 0)])[0]
    doc = orjson.loads(action.to_bytes())
    assert doc["step"] == "r1" and Action.from_json(action.to_bytes()) == action
    plain = Action("act_x", "r", "v", "u1", 1, ("m",), "log", "why")
    assert "step" not in plain.to_json() and Action.from_json(plain.to_bytes()).step is None


def test_a_lead_at_a_removed_step_leaves_and_one_at_a_kept_step_goes_on() -> None:
    state = evaluate(CART, None, track("Product Added", 0)).state
    state = evaluate(CART, state, Tick(at(60))).state  # now at w2 (wait_for)
    edited = rules(CART_RESCUE.replace("{id: r2, send", "{id: r2b, send").replace("else: r2", "else: r2b"))
    moved = evaluate(edited, state, Tick(at(60 + 24 * HOUR)))
    assert [(a.step, a.rule_version) for a in moved.actions] == [("r2b", edited.rules[0].version)]
    renamed = rules(CART_RESCUE.replace("id: w2", "id: w2b").replace("goto: w2", "goto: w2b"))
    gone = evaluate(renamed, state, track("Product Viewed", 90, mid="v9"))
    assert gone.actions == [] and gone.state.rules == {} and gone.deadlines == []
    assert [(u["event"], u["step"], u["reason"], u["message_id"]) for u in gone.updates] == [
        ("exited", "w2", "step_removed", "v9")
    ]
    at_wake = evaluate(renamed, state, Tick(at(60 + 24 * HOUR)))
    assert [(u["event"], u["reason"], u["at_ms"]) for u in at_wake.updates] == [
        ("exited", "step_removed", at(60 + 24 * HOUR))
    ]


def test_a_hand_built_loop_without_a_wait_is_stopped_by_the_guard() -> None:
    logic = JourneyLogic(
        lambda ctx: ctx.event.name == "Go",
        (JourneyStep("a", "send", "b", action=ActionSpec("log")), JourneyStep("b", "goto", "a")),
    )
    rule = Rule("spin", "journey", "v1", ActionSpec("log"), logic)
    result = evaluate(RuleSet.of([rule]), None, track("Go", 0))
    assert len(result.actions) == (STEPS_WITHOUT_WAIT + 1) // 2
    assert result.updates[-1]["event"] == "exited" and result.updates[-1]["reason"] == "loop_guard"
    assert result.state.rules == {}


def test_merge_keeps_the_known_lead_s_journey_else_the_anonymous_one_s() -> None:
    known = evaluate(CART, None, track("Product Added", 0, lead="known")).state
    anonymous = evaluate(CART, None, track("Product Added", 10, lead="anon")).state
    assert known.merge(anonymous, CART).slot(RESCUE).entry_ms == at(0)
    fresh = LeadState("known")
    merged = fresh.merge(anonymous, CART)
    assert merged.slot(RESCUE).entry_ms == at(10) and merged.lead_id == "known"
    result = evaluate(CART, merged, Tick(at(70)))  # the journey in progress moved with the lead
    assert [(a.lead_id, a.step) for a in result.actions] == [("known", "r1")]
    never = rules(CART_RESCUE.replace("re_entry: after_exit", "re_entry: never"))
    marker = evaluate(never, evaluate(never, None, track("Product Added", 0)).state, track("Order Completed", 1))
    into = marker.state.merge(evaluate(never, None, track("Product Added", 5, lead="anon")).state, never)
    assert into.slot(never.rules[0]).step == "w1"  # a journey in progress beats a lead that has left


def test_journey_records_and_sends_from_a_stage_change() -> None:
    ruleset = rules(
        """
rules:
  - id: score
    kind: score
    points: [{match: {event: Demo Requested}, points: 50}]
    stages: {lead: 0, sql: 40}
    action: {connector: log}
  - id: nurture
    kind: journey
    entry: {event: Signed Up}
    exit_on: {event: Stage Changed, where: {properties.to: sql}}
    steps:
      - {id: wait, wait: 2d}
      - {id: tip, send: {connector: email, template: tip}}
"""
    )
    events = [track("Signed Up", 0), track("Demo Requested", 60, mid="d1")]
    actions, records = sim(ruleset, events)
    assert [a.rule for a in actions] == []
    assert trail(records)[-1] == ("u1", 60, "exited", "wait", "exit_on")
