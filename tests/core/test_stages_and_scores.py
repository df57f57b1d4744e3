"""Score math against an independent computation; lifecycle stages pinned; explanations; `Stage Changed`."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import LeadState, evaluate
from engine.core.stages import MAX_STAGE_EVENTS, STAGE_CHANGED
from engine.events import Event
from tests.core.helpers import MIN, at, page, rules, run, track

DAY = 24 * 60  # minutes
HALF_LIFE_DAYS = 3

SCORING = rules(
    f"""
rules:
  - id: score
    kind: score
    half_life: {HALF_LIFE_DAYS}d
    points:
      - {{match: {{event: Demo Requested}}, points: 30}}
      - {{match: {{event: Email Opened}}, points: 4, daily_cap: 10}}
      - {{match: {{event: Unsubscribed}}, points: -25, daily_cap: 40}}
      - {{match: {{type: page}}, points: 1}}
    action: {{connector: log}}
"""
)
POINTS = {"Demo Requested": (30, None), "Email Opened": (4, 10), "Unsubscribed": (-25, 40)}


def closed_form(events: list[tuple[str, float]], now_min: float) -> float:
    """Sum of points_i * 2^(-(now - t_i) / half_life), each entry's absolute points capped per UTC day (event time)."""
    used: dict[tuple[str, int], float] = {}
    total = 0.0
    for name, minute in events:
        points, cap = POINTS[name]
        if cap is not None:
            day = at(minute) // (DAY * MIN)
            room = max(0.0, cap - used.get((name, day), 0.0))
            points = min(points, room) if points >= 0 else max(points, -room)
            used[(name, day)] = used.get((name, day), 0.0) + abs(points)
        total += points * 2.0 ** (-(now_min - minute) / (HALF_LIFE_DAYS * DAY))
    return total


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(POINTS)), st.integers(0, 12 * DAY)),
        min_size=1,
        max_size=25,
    ).map(lambda items: sorted(items, key=lambda item: item[1])),
    st.integers(0, 10 * DAY),
)
def test_score_equals_the_closed_form_with_caps_and_half_life_decay(events: list[tuple[str, int]], later: int) -> None:
    stream = [track(name, minute, mid=f"m{i}") for i, (name, minute) in enumerate(events)]
    state, _ = run(SCORING, stream)
    now = events[-1][1] + later
    # read the score as `if:` and templates see it: the lead view at `now` (a page worth 1 point, then minus 1)
    probe = evaluate(SCORING, state, page("/x", now, mid="probe"))
    view_score = probe.state.slot(SCORING.rules[0]).value - 1
    assert abs(view_score - closed_form(events, now)) < 0.01 * max(1, len(events))


def test_top_contributions_rank_by_current_decayed_value_and_name_the_events() -> None:
    # an old big contribution (30 points, 9 days = 3 half-lives ago: worth 3.75 now) ranks below fresh 4-point opens
    stream = [track("Demo Requested", 0, mid="demo")]
    stream += [track("Email Opened", 9 * DAY + i, mid=f"open{i}") for i in range(2)]
    stream += [page("/a", 9 * DAY + 5, mid="pg")]
    state, _ = run(SCORING, stream)
    top = SCORING.rules[0].logic.top(state.slot(SCORING.rules[0]), at(9 * DAY + 5))
    assert [item["message_id"] for item in top] == ["open1", "open0", "demo"]
    assert top[2]["points"] == 30 and abs(top[2]["now"] - 3.75) < 0.01 and top[2]["matcher"] == "'Demo Requested'"
    assert top[0]["at_ms"] == at(9 * DAY + 1)


def test_score_actions_explain_their_top_contributions_and_the_view_lists_them() -> None:
    ruleset = rules(
        """
rules:
  - id: score
    kind: score
    points:
      - {match: {event: Demo Requested}, points: 30}
      - {match: {type: page, where: {properties.path: {prefix: /pricing}}}, points: 5}
    thresholds:
      - {at: 40, name: mql, action: {connector: slack, template: mql_alert}}
"""
    )
    long_id = "0f8e4a1c-4c1b-4f9a-9b2e-1234567890ab"
    _, [action] = run(ruleset, [page("/pricing", 0, mid="p1"), page("/pricing", 1, mid=long_id),
                                    track("Demo Requested", 2, mid="d1")])  # fmt: skip
    assert "top contributions: 'Demo Requested' +30 (message d1)" in action.explanation
    top = action.context["score_top"]
    assert [item["message_id"] for item in top] == ["d1", "~b2e-1234567890ab", "p1"]
    assert all(len(item["message_id"]) <= 17 for item in top)  # long ids keep their (distinctive) tail
    assert top[1]["message_id"].startswith("~") and long_id.endswith(top[1]["message_id"][1:])


LIFECYCLE = """
rules:
  - id: lifecycle
    kind: score
    points:
      - {match: {event: Email Opened}, points: 10}
      - {match: {event: Unsubscribed}, points: -50}
    stages: {subscriber: 0, lead: 10, mql: 40, sql: 80, opportunity: null, customer: null}
    stage_on:
      - {match: {event: Demo Requested}, stage: sql}
      - {match: {event: Signed Up}, stage: lead}
      - {match: {event: Order Completed}, stage: customer}
      - {match: {event: Subscription Cancelled}, stage: lead, allow_backward: true}
    action: {connector: log}
"""


def stage_after(ruleset: Any, stream: list[Event], state: LeadState | None = None) -> tuple[str, list[dict]]:
    updates: list[dict] = []
    for event in stream:
        result = evaluate(ruleset, state, event)
        state, updates = result.state, updates + [u for u in result.updates if u["kind"] == "stage_changed"]
    assert state is not None
    return state.slot(ruleset.rules[0]).stage, updates


def test_score_moves_stages_forward_and_decay_or_negative_points_never_move_them_back() -> None:
    ruleset = rules(LIFECYCLE)
    opens = [track("Email Opened", i, mid=f"o{i}") for i in range(4)]
    stage, updates = stage_after(ruleset, opens)
    assert stage == "mql"
    assert [(u["from"], u["to"]) for u in updates] == [(None, "lead"), ("lead", "mql")]
    assert updates[1]["reason"] == "score 40 reached mql at 40" and updates[1]["trigger"] == "o3"
    stage, updates = stage_after(ruleset, [*opens, track("Unsubscribed", 5)])
    assert stage == "mql" and len(updates) == 2  # the score is -10 now; the stage stays


def test_events_move_stages_forward_only_unless_the_entry_allows_backward() -> None:
    ruleset = rules(LIFECYCLE)
    stage, updates = stage_after(ruleset, [track("Demo Requested", 0, mid="d")])
    assert stage == "sql" and updates[0]["reason"] == "event 'Demo Requested' (message d) moves the lead to sql"
    assert updates[0]["kind"] == "stage_changed" and updates[0]["stage"] == "sql" and updates[0]["lead_id"] == "u1"
    stage, updates = stage_after(ruleset, [track("Demo Requested", 0), track("Signed Up", 1)])
    assert stage == "sql" and len(updates) == 1  # sign-up would be a move back to lead: ignored
    stage, updates = stage_after(ruleset, [track("Order Completed", 0), track("Subscription Cancelled", 1)])
    assert stage == "lead" and [(u["from"], u["to"]) for u in updates] == [(None, "customer"), ("customer", "lead")]


def test_after_a_backward_move_only_new_evidence_moves_the_lead_forward_again() -> None:
    ruleset = rules(LIFECYCLE)
    stream = [track("Email Opened", i, mid=f"o{i}") for i in range(9)]  # score 90: sql
    stream += [track("Subscription Cancelled", 10), track("Email Opened", 11, mid="o11")]
    stage, updates = stage_after(ruleset, stream)
    assert stage == "lead"  # 100 points, but no threshold was crossed since the move back
    assert (updates[-1]["from"], updates[-1]["to"]) == ("sql", "lead")
    stage, _ = stage_after(ruleset, [*stream, track("Demo Requested", 12)])
    assert stage == "sql"


def test_stage_changed_is_an_event_other_rules_match_in_the_same_step() -> None:
    ruleset = rules(
        LIFECYCLE
        + """
  - id: sql_alert
    kind: threshold
    match: {event: Stage Changed, where: {properties.to: sql}}
    count: 1
    within: 1m
    action: {connector: slack, template: hot_lead, payload: {assign: true}}
"""
    )
    result = evaluate(ruleset, None, track("Demo Requested", 0, mid="d1"))
    [alert] = result.actions
    assert alert.rule == "sql_alert" and alert.context["stage"] == "sql" and alert.fired_at_ms == at(0)
    [update] = result.updates
    assert alert.trigger == (update["message_id"],) and update["message_id"].startswith("stage-")
    again = evaluate(ruleset, None, track("Demo Requested", 0, mid="d1"))
    assert again.actions == result.actions and again.updates == result.updates  # replay: same ids


def test_rules_reacting_to_stage_changes_cannot_loop() -> None:
    # `ping` flips on every change `pong` makes, `pong` copies every change `ping` makes: an endless ping-pong
    ruleset = rules(
        """
rules:
  - id: ping
    kind: score
    points: [{match: {event: Nothing}, points: 1}]
    stages: {a: null, b: null}
    stage_on:
      - {match: {event: Go}, stage: a}
      - {match: {event: Stage Changed, where: {properties.to: a}}, stage: b, allow_backward: true}
      - {match: {event: Stage Changed, where: {properties.to: b}}, stage: a, allow_backward: true}
    action: {connector: log}
  - id: pong
    kind: score
    points: [{match: {event: Nothing}, points: 1}]
    stages: {a: null, b: null}
    stage_on:
      - {match: {event: Stage Changed, where: {properties.to: a}}, stage: a, allow_backward: true}
      - {match: {event: Stage Changed, where: {properties.to: b}}, stage: b, allow_backward: true}
    action: {connector: log}
"""
    )
    result = evaluate(ruleset, None, track("Go", 0))
    moves = [(u["rule"], u["to"]) for u in result.updates]
    assert moves == [("ping", "a"), ("pong", "a"), ("ping", "b"), ("pong", "b"), ("ping", "a")]
    assert len(moves) == MAX_STAGE_EVENTS + 1  # every change is published; only MAX_STAGE_EVENTS are shown
    assert STAGE_CHANGED not in result.state.facts.get("rc", [])  # synthetic events leave the facts alone


def test_on_stage_fires_the_stage_action_once_per_change() -> None:
    ruleset = rules(
        LIFECYCLE.replace(
            "    action: {connector: log}",
            "    on_stage: {sql: {connector: slack, template: hot_lead, payload: {assign: true}}}\n"
            "    action: {connector: log}",
        )
    )
    _, actions = run(ruleset, [track("Demo Requested", 0, mid="d1"), track("Demo Requested", 1, mid="d2")])
    [hot] = actions
    assert hot.template == "hot_lead" and hot.payload == {"assign": True} and hot.trigger == ("d1",)
    change = hot.context["trigger"]["stage_change"]
    assert change["from"] is None and change["to"] == "sql" and change["reason"].startswith("event 'Demo Requested'")
    assert hot.explanation.startswith("lead moved from no stage to sql: event 'Demo Requested'")


def test_merge_keeps_the_higher_stage_and_the_best_contributions() -> None:
    ruleset = rules(LIFECYCLE)
    known, _ = run(ruleset, [track("Email Opened", 0, mid="k1")])
    anonymous, _ = run(ruleset, [track("Demo Requested", 0, lead="anon", mid="a1")])
    merged = known.merge(anonymous, ruleset)
    slot = merged.slot(ruleset.rules[0])
    assert slot.stage == "sql" and slot.value == 10
    assert [message_id for message_id, *_ in slot.top] == ["k1"]


def test_day_boundaries_reset_caps() -> None:
    first = [track("Email Opened", 0, mid=f"a{i}") for i in range(5)]  # 4+4+2 (cap 10), then 0, 0
    second = [track("Email Opened", DAY, mid="b")]
    state, _ = run(SCORING, first + second)
    value = state.slot(SCORING.rules[0]).value
    assert abs(value - (10 * 2 ** (-1 / HALF_LIFE_DAYS) + 4)) < 0.001  # T0 is 08:00 UTC: a new UTC day
