"""`InputPositions` (engine/worker/input_positions.py): each partition's records in offset order from a known start,
none skipped, none twice, and the processed positions the worker commits. The crash test runs the same rules on
a real broker (tests/integration/test_worker_crash.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.worker.input_positions import RESEEK_AFTER_S, STALL_AFTER_S, InputPositions

TOPIC = "clickstream"


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    generation_id: int = 1
    topic: str = TOPIC


def offsets(records: list[Rec]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def test_records_in_order_are_admitted_and_committed_once_processed() -> None:
    positions = InputPositions()
    positions.start((TOPIC, 0), 10)
    positions.start((TOPIC, 1), 0)
    assert offsets(positions.admit([Rec(0, 10), Rec(1, 0), Rec(0, 11)], 1)) == [(0, 10), (1, 0), (0, 11)]
    assert positions.to_commit() == {}  # admitted, not processed yet
    positions.processed(positions.handed_out())
    assert positions.to_commit() == {(TOPIC, 0): 12, (TOPIC, 1): 1}
    positions.committed(positions.to_commit())
    assert positions.to_commit() == {}


def test_a_jump_past_unprocessed_offsets_asks_for_one_seek_back_and_admits_nothing_beyond_it() -> None:
    """What Faust did after a restart: records fetched before its seek vanished from the queue, and the fetch that
    went on after the seek continued past them."""
    now = [0.0]
    positions = InputPositions(clock=lambda: now[0])
    positions.start((TOPIC, 0), 100)
    assert offsets(positions.admit([Rec(0, 100), Rec(0, 187), Rec(0, 188)], 1)) == [(0, 100)]
    assert positions.seeks == [((TOPIC, 0), 101, 187)]
    positions.seeks.clear()
    assert positions.admit([Rec(0, 189)], 1) == []  # the stale fetch drains: no second seek at once
    assert positions.seeks == []
    now[0] += RESEEK_AFTER_S + 0.1
    assert positions.admit([Rec(0, 190)], 1) == []
    assert positions.seeks == [((TOPIC, 0), 101, 190)]  # still stuck: seek again
    assert offsets(positions.admit([Rec(0, 101), Rec(0, 102)], 1)) == [(0, 101), (0, 102)]
    positions.processed(positions.handed_out())
    assert positions.to_commit() == {(TOPIC, 0): 103}


@pytest.mark.parametrize(
    "stale",
    [
        Rec(0, 5),  # already admitted (a redelivery after a seek)
        Rec(1, 0),  # a partition whose start is not known yet (fetched before the seek)
        Rec(0, 6, generation_id=0),  # an earlier consumer generation
    ],
)
def test_records_that_are_not_next_are_left_out(stale: Rec) -> None:
    positions = InputPositions()
    positions.start((TOPIC, 0), 6)
    assert positions.admit([stale], 1) == []
    assert positions.next_offset[(TOPIC, 0)] == 6 and positions.seeks == []


def test_a_revoked_partition_is_forgotten_until_its_next_start() -> None:
    positions = InputPositions()
    positions.start((TOPIC, 0), 0)
    positions.admit([Rec(0, 0)], 1)
    positions.processed(positions.handed_out())
    positions.forget([(TOPIC, 0)])
    assert positions.to_commit() == {} and positions.admit([Rec(0, 1)], 1) == []
    positions.start((TOPIC, 0), 1)
    assert offsets(positions.admit([Rec(0, 1)], 1)) == [(0, 1)]


def test_a_partition_short_of_its_end_that_hands_out_nothing_is_sought_back() -> None:
    """The crash test's loss: the worker restarted after the stream ended, the records fetched before Faust's seek
    vanished, and they were the partition's last ones: no later record showed a jump, the partition never caught
    up and its pending deadlines never fired."""
    now = [0.0]
    positions = InputPositions(clock=lambda: now[0])
    positions.start((TOPIC, 0), 733)
    positions.start((TOPIC, 1), 674)
    ends = {(TOPIC, 0): 740, (TOPIC, 1): 674}  # partition 1 is at its end: nothing to fetch
    assert positions.stalled(ends) == []  # short of its end, but give the fetch its time
    now[0] += STALL_AFTER_S - 0.1
    assert positions.stalled(ends) == [] and positions.seeks == []
    now[0] += 0.2
    assert positions.stalled(ends) == [((TOPIC, 0), 733, 740)]
    assert positions.seeks == [((TOPIC, 0), 733, 740)]
    positions.seeks.clear()
    now[0] += 0.1
    assert positions.stalled(ends) == []  # sought back just now: not again at once
    now[0] += RESEEK_AFTER_S
    assert positions.stalled(ends) == [((TOPIC, 0), 733, 740)]  # still nothing: again
    positions.seeks.clear()
    assert offsets(positions.admit([Rec(0, 733), Rec(0, 734)], 1)) == [(0, 733), (0, 734)]
    now[0] += STALL_AFTER_S + 0.1
    assert positions.stalled(ends) == []  # it moved since the last look: records are arriving
    assert positions.stalled({(TOPIC, 0): 735}) == [] and positions.seeks == []  # an end it reached is no stall


def test_a_partition_with_an_unknown_start_or_end_is_not_sought() -> None:
    now = [0.0]
    positions = InputPositions(clock=lambda: now[0])
    positions.start((TOPIC, 0), 5)
    for _ in range(3):
        assert positions.stalled({(TOPIC, 1): 9}) == []  # start unknown (not assigned, or before the seek)
        now[0] += STALL_AFTER_S + RESEEK_AFTER_S
    assert positions.stalled({}) == [] and positions.seeks == []  # end unknown (no fetch answered yet)


def test_time_with_records_queued_does_not_count_as_stalled() -> None:
    """Under back-pressure (a full queue pauses fetching) a partition hands out nothing for long stretches while
    records are queued: that is waiting its turn, and seeking it would only re-fetch (and raced the fetcher)."""
    now = [0.0]
    positions = InputPositions(clock=lambda: now[0])
    positions.start((TOPIC, 0), 733)
    ends = {(TOPIC, 0): 740}
    assert positions.stalled(ends) == []
    for _ in range(5):
        now[0] += STALL_AFTER_S
        positions.busy()  # the worker's check saw records queued
    assert positions.stalled(ends) == [] and positions.seeks == []  # idle time counts from here
    now[0] += STALL_AFTER_S + 0.1
    assert positions.stalled(ends) == [((TOPIC, 0), 733, 740)]


def test_a_batch_counts_as_processed_up_to_its_snapshot_while_the_next_is_already_handed_out() -> None:
    positions = InputPositions()
    positions.start((TOPIC, 0), 0)
    positions.admit([Rec(0, 0), Rec(0, 1)], 1)
    first = positions.handed_out()
    positions.admit([Rec(0, 2)], 1)  # the next batch, evaluated while the first one's output is on its way
    positions.processed(first)
    assert positions.to_commit() == {(TOPIC, 0): 2}, "only what the acknowledged batch held"
    positions.processed(positions.handed_out())
    assert positions.to_commit() == {(TOPIC, 0): 3}


def test_a_late_snapshot_never_moves_a_partition_forgotten_or_started_again_since() -> None:
    positions = InputPositions()
    positions.start((TOPIC, 0), 0)
    positions.start((TOPIC, 1), 0)
    positions.admit([Rec(0, 0), Rec(1, 0)], 1)
    snapshot = positions.handed_out()
    positions.forget([(TOPIC, 1)])
    positions.start((TOPIC, 0), 7)  # assigned again, sought to its committed offset
    positions.processed(snapshot)
    assert positions.processed_up_to((TOPIC, 0)) == 7
    assert positions.processed_up_to((TOPIC, 1)) is None
