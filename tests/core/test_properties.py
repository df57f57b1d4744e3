"""Property tests of the core over the shipped rule pack: interleaving independence, replay, bounded state."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import LeadState, RuleSet, Tick, evaluate, simulate
from engine.core.simulate import FLUSH_HORIZON_MS, FLUSH_TICKS
from engine.events import Event
from engine.language import load_rules
from tests.core.strategies import BASE, MINUTE, interleavings, lead_stream, multi_lead_streams

PACK: RuleSet = load_rules([Path(__file__).resolve().parents[2] / "rules"])
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _output(actions: list) -> bytes:
    return b"\n".join(a.to_bytes() for a in actions)


@FAST
@given(st.data())
def test_output_does_not_depend_on_how_leads_interleave(data: st.DataObject) -> None:
    per_lead = data.draw(multi_lead_streams())
    first = data.draw(interleavings(per_lead))
    second = data.draw(interleavings(per_lead))
    assert _output(simulate(PACK, first)) == _output(simulate(PACK, second))


@FAST
@given(multi_lead_streams(), st.booleans())
def test_replaying_the_same_input_gives_identical_output(per_lead: dict[str, list[Event]], flush: bool) -> None:
    events = [e for stream in per_lead.values() for e in stream]
    reloaded = load_rules([Path(__file__).resolve().parents[2] / "rules"])
    assert _output(simulate(PACK, events, flush)) == _output(simulate(reloaded, events, flush))


def _worker_like(rules: RuleSet, events: list[Event]) -> list:
    """Evaluate like the live worker: state kept as bytes between steps, deadlines fired by ticks at the end (one
    tick per pending deadline, earliest first: a journey's wait reached at a deadline adds a later one; bounded
    like `simulate`'s flush)."""
    stored: dict[str, bytes] = {}
    deadlines: dict[str, list[int]] = {}
    actions = []
    for event in sorted(events, key=lambda e: e.timestamp_ms):  # stable: ties keep input order
        state = LeadState.from_bytes(stored[event.lead_id]) if event.lead_id in stored else None
        result = evaluate(rules, state, event)
        stored[event.lead_id] = result.state.to_bytes()
        deadlines[event.lead_id] = result.deadlines
        actions.extend(result.actions)
    last = {e.lead_id: max(x.timestamp_ms for x in events if x.lead_id == e.lead_id) for e in events}
    for lead, pending in sorted(deadlines.items()):
        for _ in range(FLUSH_TICKS):
            if not pending or pending[0] > last[lead] + FLUSH_HORIZON_MS:
                break
            result = evaluate(rules, LeadState.from_bytes(stored[lead]), Tick(pending[0]))
            stored[lead] = result.state.to_bytes()
            pending = [t for t in result.deadlines if t > pending[0]]
            actions.extend(result.actions)
    return sorted(actions, key=lambda a: a.action_id)


@FAST
@given(multi_lead_streams())
def test_state_round_trip_through_bytes_changes_nothing(per_lead: dict[str, list[Event]]) -> None:
    events = [e for stream in per_lead.values() for e in stream]
    expected = sorted(simulate(PACK, events), key=lambda a: a.action_id)
    assert [a.to_bytes() for a in _worker_like(PACK, events)] == [a.to_bytes() for a in expected]


# Hypothesis found 1,030 B before journeys (a customer with a cart, full windows, top scores) and 1,300 B with the
# journey packs (the same lead also in three journeys at once: ~70 B a slot).
WORST_CASE_STATE_BYTES = 1536


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(lead_stream("endless", max_size=400, max_gap_min=90))
def test_state_stays_bounded_on_an_endless_stream_of_one_lead(events: list[Event]) -> None:
    """Worst case over adversarial streams: every window full of long message ids, a full cart, a stage and
    score contributions at once, and three journeys, stays under WORST_CASE_STATE_BYTES; the average the issue's
    1 KiB target is about (measured by the benchmark over 50k leads) is ~0.3-0.7 KiB."""
    state = None
    largest = LeadState()
    for event in events:
        state = evaluate(PACK, state, event).state
        if state.size() > largest.size():
            largest = state
    assert largest.size() <= WORST_CASE_STATE_BYTES, largest.to_bytes().decode()


def test_state_stays_bounded_over_ten_thousand_events() -> None:
    """A long deterministic stream cycling through the whole vocabulary: size plateaus well under 1 KiB."""
    from engine.events import parse_event
    from tests.core.strategies import PAGES, TRACK_NAMES

    state = None
    sizes = []
    for i in range(10_000):
        ts = BASE + i * 7 * MINUTE // 3
        if i % 3 == 0:
            doc = {"type": "page", "properties": {"path": PAGES[i % len(PAGES)]}}
        else:
            doc = {
                "type": "track",
                "event": TRACK_NAMES[i % len(TRACK_NAMES)],
                "properties": {"product_id": f"p{i % 40}", "price": 10, "name": f"Product {i % 40}"},
            }
        doc.update({"userId": "endless", "messageId": f"m{i}", "timestamp": ts, "traits": {"email": "e@x.io"}})
        state = evaluate(PACK, state, parse_event(doc)).state
        sizes.append(state.size())
    assert max(sizes) <= 1024
    assert max(sizes[5000:]) <= max(sizes[:5000]) + 64  # no slow growth


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(("track", "page", "identify", "screen", "group", "alias")),
                "event": st.sampled_from(("Product Added", "Product Removed", "Order Completed", "Demo Requested")),
                "userId": st.just("fuzz"),
                "timestamp": st.integers(BASE, BASE + 10**8),
                "properties": st.dictionaries(
                    st.sampled_from(("product_id", "sku", "name", "price", "quantity", "path", "total", "x")),
                    json_values,
                ),
                "traits": st.dictionaries(st.text(max_size=10), json_values, max_size=5),
                "context": st.dictionaries(st.sampled_from(("campaign", "traits", "page")), json_values),
            }
        ),
        max_size=15,
    )
)
def test_arbitrary_event_contents_never_break_evaluation_or_the_state_round_trip(docs: list[dict]) -> None:
    import json

    from engine.events import InvalidEvent, parse_event

    state = None
    for doc in docs:
        try:
            event = parse_event(json.dumps(doc).encode())  # as on the wire
        except InvalidEvent:
            continue
        result = evaluate(PACK, state, event)
        state = result.state
        assert LeadState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()
        for action in result.actions:
            assert action.to_bytes()
