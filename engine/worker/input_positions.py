"""Where each input partition of the worker stands: the next offset to hand out, what is processed, what is
committed. Pure bookkeeping (no Faust, no I/O), so the rule that keeps a crash from skipping input is testable
on its own; `faust_ext.batched_input.WorkerInput` applies it to the records Faust delivers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

Key = tuple[str, int]  # (topic, partition)

# While the records fetched before a seek drain away, a partition is sought back at most this often.
RESEEK_AFTER_S = 1.0
# A partition with records below its end offset that hands out none of them for this long is sought back too.
STALL_AFTER_S = 1.0


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    generation_id: int


class InputPositions:
    """Each input partition's records in offset order from a known start, none skipped, none twice.

    `start(key, offset)` sets where a partition's input begins (the offset the consumer was sought to after an
    assignment). `admit(records, generation)` returns the records to process now, in the given order: for each
    partition exactly the next expected offset, then the one after. A record below the next expected offset (a
    redelivery after a seek), of a partition whose start is unknown (fetched before the seek), or of another
    consumer generation is left out. A record above it means records in between were lost on the way: it and the
    rest of that partition's records are left out, and `admit` asks for a seek back to the expected offset
    (`seeks`), at most once per `RESEEK_AFTER_S` for the same offset while the stale fetch drains.

    A jump shows only when a later record arrives. When the records that vanished were a partition's last ones
    (a restart after the producers paused or stopped), nothing arrives at all: `stalled(ends)`, called
    periodically with each partition's end offset (the highwater of the consumer's last fetch), asks for the same
    seek back for a partition that has records below its end yet handed out none of them for `STALL_AFTER_S`.
    Without it such a partition would wait for its next record forever, never caught up, its deadlines frozen.

    `processed(snapshot)` marks what was admitted up to a `handed_out()` snapshot as processed (call it once
    their output is flushed; later batches may be in progress meanwhile);
    `to_commit()` gives the processed positions that moved since `committed()` was last told about them.
    Not thread-safe; one event loop.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.next_offset: dict[Key, int] = {}
        self.processed_offset: dict[Key, int] = {}
        self._committed: dict[Key, int] = {}
        self._reseek: dict[Key, tuple[int, float]] = {}
        self._waiting: dict[Key, tuple[int, float]] = {}  # (next offset, since when) of a partition short of its end
        self._clock = clock
        self.seeks: list[tuple[Key, int, int]] = []  # (partition, offset to seek back to, offset seen), to act on

    def start(self, key: Key, offset: int) -> None:
        self.next_offset[key] = self.processed_offset[key] = self._committed[key] = offset
        self._reseek.pop(key, None)
        self._waiting.pop(key, None)

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            for positions in (self.next_offset, self.processed_offset, self._committed, self._reseek, self._waiting):
                positions.pop(key, None)

    def admit(self, records: Sequence[Any], generation: int) -> list[Any]:
        expected = self.next_offset
        kept: list[Any] = []
        blocked: set[Key] = set()
        for record in records:
            if record.generation_id != generation:
                continue
            key = (record.topic, record.partition)
            want = expected.get(key)
            if want is None or key in blocked:
                continue
            offset = record.offset
            if offset == want:
                expected[key] = offset + 1
                kept.append(record)
            elif offset > want:
                blocked.add(key)
                self._ask_seek(key, want, offset)
        return kept

    def stalled(self, ends: Mapping[Key, int]) -> list[tuple[Key, int, int]]:
        """Ask for a seek back (`seeks`) for each partition whose next offset has stayed below its end offset in
        `ends` (records exist that were never handed out) for `STALL_AFTER_S`, at most once per `RESEEK_AFTER_S`
        for the same offset; returns those asked for now as (partition, offset to seek back to, end offset).
        Partitions not in `ends` (end unknown) are left alone. Costs nothing per record: progress is seen as the
        next offset moving between two calls."""
        now = self._clock()
        asked = []
        for key, end in ends.items():
            want = self.next_offset.get(key)
            if want is None or want >= end:
                self._waiting.pop(key, None)
                continue
            waiting = self._waiting.get(key)
            if waiting is None or waiting[0] != want:
                self._waiting[key] = (want, now)  # short of its end, but it moved: records may be on their way
                continue
            if now - waiting[1] >= STALL_AFTER_S and self._ask_seek(key, want, end):
                asked.append((key, want, end))
        return asked

    def busy(self) -> None:
        """The input still has records queued: a partition that hands out nothing now is waiting its turn (or
        paused by back-pressure), not stalled. Forget how long each has waited, so `stalled` counts idle time only."""
        self._waiting.clear()

    def _ask_seek(self, key: Key, offset: int, seen: int) -> bool:
        last = self._reseek.get(key)
        now = self._clock()
        if last is not None and last[0] == offset and now - last[1] < RESEEK_AFTER_S:
            return False
        self._reseek[key] = (offset, now)
        self.seeks.append((key, offset, seen))
        return True

    def handed_out(self) -> dict[Key, int]:
        """Where each partition stands now (the next offset to hand out): pass it to `processed` once what was
        handed out up to here is processed, while later records may already be on their way."""
        return dict(self.next_offset)

    def processed(self, up_to: Mapping[Key, int]) -> None:
        """Everything handed out up to `up_to`, a `handed_out()` snapshot, is processed. A partition forgotten since
        the snapshot, or started again at another offset, is left alone."""
        for key, offset in up_to.items():
            done = self.processed_offset.get(key)
            if done is not None and done <= offset <= self.next_offset[key]:
                self.processed_offset[key] = offset

    def processed_up_to(self, key: Key) -> int | None:
        return self.processed_offset.get(key)

    def to_commit(self, only: Iterable[Key] | None = None) -> dict[Key, int]:
        keys = self.processed_offset.keys() if only is None else [k for k in only if k in self.processed_offset]
        return {k: self.processed_offset[k] for k in keys if self._committed.get(k) != self.processed_offset[k]}

    def committed(self, positions: Mapping[Key, int]) -> None:
        self._committed.update(positions)
