"""Properties of the core over generated journeys: how leads interleave changes nothing, replays and a worker-like
run (state through bytes, deadlines through ticks) give byte-identical output, and journey state stays bounded."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import Action, LeadState, RuleSet, Tick, evaluate, simulate
from engine.core.kinds.journey import JourneyLogic
from engine.events import Event
from engine.language import parse_rules
from tests.core.journeys import journey_specs, journey_yaml, streams, to_event
from tests.core.reference import JourneySpec, RefEvent

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HORIZON = 3 * 86_400_000
TICKS = 40
CART = """
  - id: cart
    kind: absence
    when: {event: A}
    unless: {event: B}
    within: 20m
    action: {connector: log}"""


def ruleset(specs: tuple[JourneySpec, ...]) -> RuleSet:
    return parse_rules("rules:" + CART + "".join(journey_yaml(spec) for spec in specs))


def output(rules: RuleSet, events: list[Event], flush: bool = True) -> bytes:
    updates: list[dict] = []
    actions = simulate(rules, events, flush, updates=updates, flush_horizon_ms=HORIZON, flush_ticks=TICKS)
    return b"\n".join([*(a.to_bytes() for a in actions), *(orjson.dumps(u) for u in updates)])


two_journeys = st.tuples(journey_specs(0), journey_specs(1))


@SETTINGS
@given(two_journeys, streams(), st.randoms(use_true_random=False))
def test_output_does_not_depend_on_how_leads_interleave(specs, events: list[RefEvent], rnd) -> None:  # type: ignore[no-untyped-def]
    rules = ruleset(specs)
    per_lead: dict[str, list[RefEvent]] = {}
    for e in events:
        per_lead.setdefault(e[0], []).append(e)
    merged: list[RefEvent] = []
    cursors = dict.fromkeys(per_lead, 0)
    labels = [lead for lead, stream in per_lead.items() for _ in stream]
    rnd.shuffle(labels)
    for lead in labels:  # another merge keeping each lead's own order
        merged.append(per_lead[lead][cursors[lead]])
        cursors[lead] += 1
    assert output(rules, [to_event(e) for e in events]) == output(rules, [to_event(e) for e in merged])


@SETTINGS
@given(two_journeys, streams(), st.booleans())
def test_replaying_the_same_input_gives_identical_output(specs, events: list[RefEvent], flush: bool) -> None:  # type: ignore[no-untyped-def]
    first = output(ruleset(specs), [to_event(e) for e in events], flush)
    assert first == output(ruleset(specs), [to_event(e) for e in events], flush)


def worker_like(rules: RuleSet, events: list[Event], early_ticks: bool) -> tuple[list[Action], list[dict]]:
    """As the worker runs: state stored as bytes between inputs; deadlines fired by ticks (at each deadline, or
    one tick just before the lead's next event), never by the events themselves; ends like the bounded flush."""
    stored: dict[str, bytes] = {}
    pending: dict[str, list[int]] = {}
    last: dict[str, int] = {}
    actions: list[Action] = []
    updates: list[dict] = []

    def step(lead: str, item: Event | Tick) -> None:
        state = LeadState.from_bytes(stored[lead]) if lead in stored else None
        result = evaluate(rules, state, item)
        stored[lead] = result.state.to_bytes()
        pending[lead] = result.deadlines
        actions.extend(result.actions)
        updates.extend(result.updates)

    for event in sorted(events, key=lambda e: e.timestamp_ms):
        lead, t = event.lead_id, event.timestamp_ms
        if early_ticks and any(d < t for d in pending.get(lead, ())):
            step(lead, Tick(t - 1))
        while any(d < t for d in pending.get(lead, ())):
            step(lead, Tick(min(pending[lead])))
        step(lead, event)
        last[lead] = t
    for lead in sorted(pending):
        for _ in range(TICKS):
            due = [d for d in pending[lead] if d <= last[lead] + HORIZON]
            if not due:
                break
            step(lead, Tick(min(due)))
    return actions, updates


@SETTINGS
@given(two_journeys, streams(), st.booleans())
def test_a_worker_like_run_through_bytes_and_ticks_gives_the_same_actions(specs, events, early) -> None:  # type: ignore[no-untyped-def]
    rules = ruleset(specs)
    evs = [to_event(e) for e in events]
    expected_updates: list[dict] = []
    expected = simulate(rules, evs, updates=expected_updates, flush_horizon_ms=HORIZON, flush_ticks=TICKS)
    actions, updates = worker_like(rules, evs, early)
    assert sorted(a.to_bytes() for a in actions) == sorted(a.to_bytes() for a in expected)
    journey = [orjson.dumps(u) for u in updates if u["kind"] == "journey"]
    assert sorted(journey) == sorted(orjson.dumps(u) for u in expected_updates if u["kind"] == "journey")


JOURNEY_SLOT_BYTES = 80  # key, entry time and id (here short), step id, since, wake, goal flag


@SETTINGS
@given(two_journeys, streams(leads=("l1",), max_size=60))
def test_journey_state_stays_bounded(specs, events: list[RefEvent]) -> None:  # type: ignore[no-untyped-def]
    """At most one slot per journey and lead, each a few dozen bytes; kept after leaving only for the goal window
    or the `re_entry: never` marker."""
    rules = ruleset(specs)
    state = None
    for event in sorted((to_event(e) for e in events), key=lambda e: e.timestamp_ms):
        state = evaluate(rules, state, event).state
        for rule in rules.rules:
            slot = state.slot(rule)
            if not isinstance(rule.logic, JourneyLogic) or slot is None:
                continue
            assert len(orjson.dumps(list(slot))) + 11 <= JOURNEY_SLOT_BYTES
            spec = specs[int(rule.id[-1])]
            if slot.step is None:  # left: only what the goal window or `never` needs
                assert spec.never or (spec.goal and not slot.goal_met and slot.wake_ms is not None)
            else:
                assert slot.wake_ms is not None and slot.wake_ms > slot.since_ms
