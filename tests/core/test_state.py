"""`LeadState` as stored: typed slots written compactly, and states written by earlier versions still read."""

from __future__ import annotations

import pytest

from engine.core import LeadState, Tick, build_view, evaluate, pending_deadlines
from engine.core.kinds.absence import AbsenceSlot
from engine.core.kinds.score import ScoreSlot
from engine.core.kinds.sequence import SequenceSlot
from engine.core.kinds.threshold import CountWindow, SumWindow
from tests.core.helpers import at, identify, page, rules, run, track

ALL_KINDS = rules(
    """
rules:
  - {id: cart, kind: absence, when: {event: Product Added}, unless: {event: Order Completed}, within: 30m,
     action: {connector: email}}
  - {id: hot, kind: threshold, match: {type: page}, count: 3, within: 10m, action: {connector: slack}}
  - {id: spend, kind: threshold, match: {event: Product Added}, sum: {field: properties.price, gte: 500},
     within: 1h, action: {connector: slack}}
  - {id: funnel, kind: sequence, steps: [{event: Product Added}, {type: page}, {event: Checkout Started}],
     within: 1h, action: {connector: email}}
  - id: score
    kind: score
    half_life: 1d
    points:
      - {match: {type: page}, points: 5, daily_cap: 10}
      - {match: {event: Product Added}, points: 7.5}
    stages: {lead: 0, mql: 20}
    thresholds: [{at: 20, name: mql}]
    action: {connector: crm}
"""
)
CART, HOT, SPEND, FUNNEL, SCORE = ALL_KINDS.rules

BEFORE = [
    identify(0, plan="pro"),
    track("Product Added", 1, price=120),
    page("/pricing", 2),
    page("/docs", 3),
    track("Product Added", 4, price=99.5),
]
AFTER = [track("Checkout Started", 5), page("/pricing", 6), track("Product Added", 7, price=400), Tick(at(40))]

# The state after BEFORE, as the worker stored it before slots were typed (score slot as a JSON object, threshold
# windows as lists of entries).
STORED_BEFORE_TYPED_SLOTS = (
    b'{"id":"u1","f":{"tr":{"plan":"pro"},"ss":1767600000000,"sp":2,"fs":1767600000000,"ls":1767600240000,'
    b'"rc":["identify","Product Added","/pricing","/docs","Product Added"],"pt":1767600180000,'
    b'"pg":["/docs","/docs",null,null],"top":60000},"r":{'
    b'"10143496":[1767600060000,"pro-1-u1",180000,"pro-4-u1",2],'
    b'"1611f127":[[1767600060000,"pro-1-u1",120],[1767600240000,"pro-4-u1",99.5]],'
    b'"2800e071":[[1767600240000,["pro-4-u1"]],[1767600060000,["pro-1-u1","page-3-u1"]]],'
    b'"55ade022":{"v":24.982,"t":1767600240000,"s":"mql","c":{"0":[20458,10]},'
    b'"x":[["pro-4-u1",1,7.5,0],["pro-1-u1",1,7.5,180],["page-3-u1",0,5,60]]},'
    b'"d9bdde96":[[1767600120000,"page-2-u1"],[1767600180000,"page-3-u1"]]}}'
)


def test_each_kind_keeps_a_typed_slot() -> None:
    state, _ = run(ALL_KINDS, BEFORE)
    assert state.slot(CART) == AbsenceSlot(at(1), "pro-1-u1", at(4) - at(1), "pro-4-u1", 2)
    assert state.slot(HOT) == CountWindow((at(2), at(3)), ("page-2-u1", "page-3-u1"))
    assert state.slot(SPEND) == SumWindow((at(1), at(4)), ("pro-1-u1", "pro-4-u1"), (120, 99.5))
    assert state.slot(FUNNEL) == SequenceSlot(((at(4), ("pro-4-u1",)), (at(1), ("pro-1-u1", "page-3-u1"))))
    score = state.slot(SCORE)
    assert isinstance(score, ScoreSlot)
    assert score.stage == "mql" and [c[0] for c in score.top] == ["pro-4-u1", "pro-1-u1", "page-3-u1"]
    assert score.caps == ((0, at(0) // 86_400_000, 10),)


def test_the_stored_form_round_trips_and_is_no_larger_than_before() -> None:
    state, _ = run(ALL_KINDS, BEFORE)
    stored = state.to_bytes()
    again = LeadState.from_bytes(stored)
    assert again == state and again.to_bytes() == stored
    assert all(again.slot(rule) == state.slot(rule) for rule in ALL_KINDS.rules)
    assert len(stored) <= len(STORED_BEFORE_TYPED_SLOTS) - 20  # no field names in the score slot, windows as columns


def test_a_state_stored_before_slots_were_typed_reads_as_the_same_state() -> None:
    typed, _ = run(ALL_KINDS, BEFORE)
    old = LeadState.from_bytes(STORED_BEFORE_TYPED_SLOTS)  # also stored before rule versions were in state keys
    # what the worker reads without evaluating: its deadline index, and the lead view
    assert pending_deadlines(ALL_KINDS, old) == pending_deadlines(ALL_KINDS, typed) == [at(34)]
    assert build_view(ALL_KINDS, old, at(5)) == build_view(ALL_KINDS, typed, at(5))
    old.read_slots(ALL_KINDS)  # what `evaluate` does first: slots under a rule's earlier key become the rule's
    assert all(old.slot(rule) == typed.slot(rule) for rule in ALL_KINDS.rules)
    old = LeadState.from_bytes(STORED_BEFORE_TYPED_SLOTS)
    # evaluation goes on as if the state had never been stored
    continued_old, old_actions = run(ALL_KINDS, AFTER, old)
    continued, actions = run(ALL_KINDS, AFTER, typed)
    assert [a.to_bytes() for a in old_actions] == [a.to_bytes() for a in actions]
    assert sorted(a.rule for a in actions) == ["cart", "funnel", "hot", "spend"]
    assert continued_old == continued  # equal JSON (slots adopted from earlier keys come later in the object)
    # an identity merge of an old state into a new one reads it too
    merged = typed.merge(LeadState.from_bytes(STORED_BEFORE_TYPED_SLOTS.replace(b'"u1"', b'"anon"')), ALL_KINDS)
    assert merged.slot(SCORE).value == 2 * typed.slot(SCORE).value


def test_slots_no_rule_touches_are_written_back_as_they_were_read() -> None:
    old = LeadState.from_bytes(STORED_BEFORE_TYPED_SLOTS)
    result = evaluate(ALL_KINDS, old, identify(4.5, plan="business"))  # no rule cares about identify
    legacy = ALL_KINDS.legacy  # the slots' keys of before rule versions were part of them are renamed
    assert result.state.to_json()["r"] == {legacy.get(key, key): slot for key, slot in old.to_json()["r"].items()}


def test_a_slot_of_the_wrong_layout_is_refused_not_misread() -> None:
    state = LeadState("u1", rules={CART.key: [1, "m"], SCORE.key: "nonsense", HOT.key: [[1], ["a"], [2]]})
    with pytest.raises(ValueError, match="not an absence slot"):
        evaluate(ALL_KINDS, state, track("Product Added", 1))
    with pytest.raises(ValueError, match="not a score slot"):
        state.slot(SCORE)
    with pytest.raises(ValueError, match="not a threshold:count slot"):
        state.slot(HOT)


def test_windows_of_either_stored_layout_with_one_or_two_entries_read_right() -> None:
    # columns and the older list of entries look alike when short: [[t], [id]] vs [[t, id], [t, id]]
    assert HOT.logic.load([[5], ["a"]]) == CountWindow((5,), ("a",))
    assert HOT.logic.load([[5, "a"]]) == CountWindow((5,), ("a",))
    assert HOT.logic.load([[5, 6], ["a", "b"]]) == CountWindow((5, 6), ("a", "b"))
    assert HOT.logic.load([[5, "a"], [6, "b"]]) == CountWindow((5, 6), ("a", "b"))
    assert SPEND.logic.load([[5], ["a"], [1.5]]) == SumWindow((5,), ("a",), (1.5,))
    assert SPEND.logic.load([[5, "a", 1.5], [6, "b", 2], [7, "c", 3]]) == SumWindow(
        (5, 6, 7), ("a", "b", "c"), (1.5, 2, 3)
    )


def test_copies_share_no_mutable_part_with_the_original() -> None:
    state, _ = run(ALL_KINDS, BEFORE)
    before = state.to_bytes()
    copy = state.copy()
    evaluate(ALL_KINDS, copy, track("Product Added", 8, price=1, product_id="new"), reuse_state=True)
    assert state.to_bytes() == before and copy.to_bytes() != before
