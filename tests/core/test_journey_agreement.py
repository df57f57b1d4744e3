"""The core agrees with the brute-force journey reference (tests/core/reference.py) on generated journeys and
streams: every send (time, step, trigger) and every journey record (entered, reached, exited, completed, goal)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import simulate
from engine.language import parse_rules
from tests.core import reference
from tests.core.journeys import MINUTE, journey_specs, journey_yaml, streams, to_event
from tests.core.reference import JourneySpec, RefEvent

HORIZON = 600 * MINUTE  # small flush bounds, so that journeys looping through waits stay cheap to check
TICKS = 25


def run_core(spec: JourneySpec, events: list[RefEvent], flush: bool) -> tuple[list, list, list]:
    rules = parse_rules("rules:" + journey_yaml(spec))
    updates: list[dict] = []
    actions = simulate(
        rules, [to_event(e) for e in events], flush, updates=updates, flush_horizon_ms=HORIZON, flush_ticks=TICKS
    )
    fires = [(a.rule, a.lead_id, a.fired_at_ms, a.step, a.trigger) for a in actions]
    records = [
        (u["lead_id"], u["at_ms"], u["event"], u["step"], u["reason"], u["entry_ms"], u["message_id"])
        for u in updates
        if u["kind"] == "journey"
    ]
    return fires, records, actions


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journey_specs(), streams(), st.booleans())
def test_core_agrees_with_the_journey_reference(spec: JourneySpec, events: list[RefEvent], flush: bool) -> None:
    fires, records, actions = run_core(spec, events, flush)
    expected_fires, expected_records = reference.journey(spec, events, flush, HORIZON, TICKS)
    text = journey_yaml(spec)
    assert records == expected_records, text
    assert sorted(fires) == sorted(expected_fires), text
    assert len({a.action_id for a in actions}) == len(actions), text  # a send step passed again: a new id
    assert all(a.step is not None and a.marketing for a in actions)
