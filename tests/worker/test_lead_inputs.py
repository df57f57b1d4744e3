"""`LeadEvaluator` (engine/worker/lead_inputs.py): one lead's batch inputs in order, in place or on copies."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core import LeadState, Tick, evaluate
from engine.worker import lead_inputs
from engine.worker.handovers import Handover, MergeIn
from engine.worker.lead_inputs import InPlaceFailed, LeadEvaluator
from tests.core.helpers import CART, at, identify, track


def evaluator() -> LeadEvaluator:
    return LeadEvaluator(CART)


@pytest.mark.parametrize("in_place", [True, False])
def test_events_then_a_tick_fire_the_abandonment_once(in_place: bool) -> None:
    out = evaluator().run(
        "u1", None, [(None, track("Product Added", 0), None), (None, Tick(at(31)), at(30))], in_place=in_place
    )
    assert [a.rule for a, kind in out.actions] == ["cart"]
    assert [kind for _, kind in out.actions] == ["deadline"]
    assert out.fired_deadlines == [at(30)]
    assert out.deadlines == []
    assert out.rejected == []


def test_in_place_and_on_copies_agree_and_copies_leave_the_input_state_alone() -> None:
    start = evaluator().run("u1", None, [(None, track("Product Added", 0), None)], in_place=False).state
    before = start.to_bytes()
    inputs = [(None, track("Product Added", 5, mid="m2"), None), (None, Tick(at(40)), at(35))]
    on_copies = evaluator().run("u1", start, inputs, in_place=False)
    assert start.to_bytes() == before
    in_place = evaluator().run("u1", LeadState.from_bytes(before), inputs, in_place=True)
    assert in_place.state.to_bytes() == on_copies.state.to_bytes()
    assert [a.action_id for a, _ in in_place.actions] == [a.action_id for a, _ in on_copies.actions]


def test_a_failing_input_aborts_in_place_and_is_rejected_alone_on_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    def flaky(rules: Any, state: Any, item: Any, now_ms: Any = None, **kwargs: Any) -> Any:
        if getattr(item, "message_id", None) == "bad":
            raise RuntimeError("core bug")
        return evaluate(rules, state, item, now_ms, **kwargs)

    inputs = [
        (None, track("Product Added", 0), None),
        ("record", track("Order Completed", 1, mid="bad"), None),
        (None, Tick(at(31)), at(30)),
    ]
    monkeypatch.setattr(lead_inputs, "evaluate", flaky)
    with pytest.raises(InPlaceFailed):
        evaluator().run("u1", None, inputs, in_place=True)
    out = evaluator().run("u1", None, inputs, in_place=False)
    assert [(source, reason) for source, _, reason, _ in out.rejected] == [("record", "evaluation_error")]
    assert [a.rule for a, _ in out.actions] == ["cart"]  # the failed purchase did not cancel it


def test_identify_with_an_anonymous_id_asks_for_a_hand_over() -> None:
    event = identify(0, lead="known")
    event = type(event)(**{**{f: getattr(event, f) for f in event.__slots__}, "anonymous_id": "anon"})
    out = evaluator().run("known", None, [(None, event, None)], in_place=True)
    assert out.handovers == [("anon", "known", at(0))]


def test_hand_over_sends_the_state_away_and_merge_in_folds_it() -> None:
    anonymous = evaluator().run("anon", None, [(None, track("Product Added", 0, lead="anon"), None)], True).state
    gone = evaluator().run("anon", anonymous, [(None, Handover("known"), None)], in_place=True)
    assert gone.state is None and gone.deadlines == []
    assert [known for known, _ in gone.merges_out] == ["known"]
    merged = evaluator().run("known", None, [(None, MergeIn("anon", gone.merges_out[0][1]), None)], True)
    assert merged.state.lead_id == "known"
    assert merged.deadlines == [at(30)]
