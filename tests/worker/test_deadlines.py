"""The worker's event-time clock and deadline index (engine/worker/deadlines.py): pure, driven by a fake wall clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.worker.deadlines import DeadlineIndex, EventClock


class FakeWall:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def test_clock_follows_event_time_minus_lateness() -> None:
    wall = FakeWall()
    clock = EventClock(allowed_lateness_ms=500, wall=wall)
    clock.observe(wall.now_ms - 10_000)  # a replay of older events: event time, not wall time, counts
    assert clock.now_ms() == wall.now_ms - 10_500
    clock.observe(wall.now_ms - 9_000)
    assert clock.now_ms() == wall.now_ms - 9_500


def test_clock_advances_with_wall_time_when_idle() -> None:
    wall = FakeWall()
    clock = EventClock(allowed_lateness_ms=500, wall=wall)
    clock.observe(wall.now_ms)
    wall.now_ms += 3_000
    assert clock.now_ms() == wall.now_ms - 500


def test_clock_without_events_runs_on_wall_time() -> None:
    wall = FakeWall()
    assert EventClock(allowed_lateness_ms=2_000, wall=wall).now_ms() == wall.now_ms - 2_000


def test_late_event_does_not_move_the_clock_back() -> None:
    wall = FakeWall()
    clock = EventClock(allowed_lateness_ms=0, wall=wall)
    clock.observe(wall.now_ms)
    wall.now_ms += 1_000
    before = clock.now_ms()
    clock.observe(wall.now_ms - 5_000)
    assert clock.now_ms() >= before


def test_event_far_in_the_future_moves_the_clock_only_to_the_skew_bound() -> None:
    wall = FakeWall()
    clock = EventClock(allowed_lateness_ms=0, max_future_skew_ms=60_000, wall=wall)
    clock.observe(wall.now_ms + 86_400_000)
    assert clock.now_ms() == wall.now_ms + 60_000


def test_negative_lateness_is_refused() -> None:
    with pytest.raises(ValueError, match="lateness"):
        EventClock(allowed_lateness_ms=-1)


def test_index_pops_due_leads_once_earliest_first() -> None:
    index = DeadlineIndex()
    index.set("a", 0, [300, 100])
    index.set("b", 1, [200])
    index.set("c", 2, [900])
    assert index.pending_deadlines == 4
    due = index.pop_due(250)
    assert [(d.lead_id, d.partition, d.deadline_ms) for d in due] == [("a", 0, 100), ("b", 1, 200)]
    assert index.pop_due(250) == [], "a lead handed out is not handed out again while its tick is in flight"
    assert index.pending_deadlines == 1 and len(index) == 1
    index.set("a", 0, [300])  # the agent evaluated the tick: the lead's remaining deadline comes back
    assert [d.lead_id for d in index.pop_due(1_000)] == ["a", "c"]


def test_set_replaces_a_leads_deadlines() -> None:
    index = DeadlineIndex()
    index.set("a", 0, [100])
    index.set("a", 0, [500])  # e.g. another item added to the cart: the abandonment deadline moved
    assert index.pop_due(400) == []
    index.set("a", 0, [])  # e.g. a purchase: nothing pending
    assert index.pop_due(10_000) == [] and index.pending_deadlines == 0


def test_limit_bounds_one_round() -> None:
    index = DeadlineIndex()
    for n in range(10):
        index.set(f"l{n}", 0, [n])
    assert len(index.pop_due(100, limit=3)) == 3
    assert len(index.pop_due(100)) == 7


@given(st.lists(st.tuples(st.integers(0, 20), st.lists(st.integers(0, 1_000), max_size=3)), max_size=200))
def test_index_agrees_with_a_plain_dict(ops: list[tuple[int, list[int]]]) -> None:
    """Whatever the sequence of replacements (and heap compactions), the due set is the dict's due set."""
    index = DeadlineIndex()
    model: dict[str, list[int]] = {}
    for lead_no, deadlines in ops:
        lead = f"lead{lead_no}"
        index.set(lead, 0, deadlines)
        model[lead] = deadlines
    expected = sorted((min(d), lead) for lead, d in model.items() if d and min(d) <= 500)
    if expected:
        assert index.may_have_due(500)  # never False with something due: the timer would skip it
    got = [(d.deadline_ms, d.lead_id) for d in index.pop_due(500)]
    assert got == expected
    assert not index.may_have_due(500)  # nothing left due, superseded entries popped on the way
    assert index.pending_deadlines == sum(len(d) for d in model.values() if d and min(d) > 500)


@given(st.dictionaries(st.integers(0, 50), st.lists(st.integers(0, 1_000), max_size=3), max_size=60))
def test_a_bulk_load_indexes_as_set_does(leads: dict[int, list[int]]) -> None:
    """`load` (the rebuild after recovery) leaves the index as a `set` per lead would."""
    loaded, one_by_one = DeadlineIndex(), DeadlineIndex()
    loaded.load(3, [(f"lead{n}", deadlines) for n, deadlines in leads.items()])
    for n, deadlines in leads.items():
        one_by_one.set(f"lead{n}", 3, deadlines)
    assert len(loaded) == len(one_by_one) and loaded.pending_deadlines == one_by_one.pending_deadlines
    assert all(loaded.count(f"lead{n}") == one_by_one.count(f"lead{n}") for n in leads)
    assert loaded.pop_due(2_000) == one_by_one.pop_due(2_000)


def test_a_bulk_load_refuses_a_lead_indexed_already() -> None:
    index = DeadlineIndex()
    index.set("lead", 0, [5])
    with pytest.raises(ValueError, match="indexed already"):
        index.load(0, [("lead", [7])])


def test_superseded_entries_do_not_pile_up() -> None:
    index = DeadlineIndex()
    for n in range(5_000):  # a busy shopper: every event moves the deadline
        index.set("busy", 0, [10_000 + n])
    assert len(index._heap) <= 2 * len(index) + 1025  # noqa: SLF001 - the compaction bound is internal
    assert [(d.lead_id, d.deadline_ms) for d in index.pop_due(20_000)] == [("busy", 14_999)]


def test_a_clock_not_caught_up_moves_only_with_events() -> None:
    """After an assignment, input below the end offset is unread: deadlines must not fire on wall time."""
    wall = FakeWall()
    clock = EventClock(allowed_lateness_ms=500, wall=wall)
    assert clock.now_ms(caught_up=False) < 0  # no event yet: nothing may fire
    clock.observe(wall.now_ms - 60_000)  # the backlog's first event, a minute old
    wall.now_ms += 5_000  # reading the backlog takes time: the clock must not run ahead of it
    assert clock.now_ms(caught_up=False) == wall.now_ms - 5_000 - 60_500
    clock.observe(wall.now_ms - 30_000)
    assert clock.now_ms(caught_up=False) == wall.now_ms - 30_500
    wall.now_ms += 2_000  # caught up: idle wall time counts again
    assert clock.now_ms(caught_up=True) == wall.now_ms - 30_500


def test_a_clock_never_goes_back_when_it_stops_being_caught_up() -> None:
    wall = FakeWall()
    clock = EventClock(allowed_lateness_ms=0, wall=wall)
    clock.observe(wall.now_ms)
    wall.now_ms += 3_000
    running = clock.now_ms(caught_up=True)
    assert clock.now_ms(caught_up=False) == running


def test_the_index_says_whether_and_how_many_deadlines_a_lead_has() -> None:
    """What an erasure counts and the idle sweep asks (engine/worker/lead_worker.py)."""
    index = DeadlineIndex()
    index.set("a", 0, [30, 10, 20])
    assert "a" in index and index.count("a") == 3
    assert "b" not in index and index.count("b") == 0
    index.discard("a")
    assert "a" not in index and index.count("a") == 0 and index.pending_deadlines == 0
