"""A deliberately simple, brute-force reference for absence, threshold and sequence semantics (issue 3).

It shares nothing with `engine.core`: every firing is recomputed from the raw, sorted
event list by brute force, so an agreement on thousands of generated streams means the incremental core is
right. Events are `(lead, name, ts_ms, message_id, value)` tuples; output is `(rule, lead, fired_at_ms,
trigger)` tuples.
"""

from __future__ import annotations

from dataclasses import dataclass

RefEvent = tuple[str, str, int, str, float]
Fire = tuple[str, str, int, tuple[str, ...]]


@dataclass(frozen=True)
class AbsenceSpec:
    id: str
    when: frozenset[str]
    unless: frozenset[str]
    within: int
    restart: bool = True
    cooldown: int = 0


@dataclass(frozen=True)
class ThresholdSpec:
    id: str
    match: frozenset[str]
    within: int
    count: int | None = None
    sum_gte: float | None = None
    cooldown: int | None = None  # None: the default, = within


def _sorted(events: list[RefEvent]) -> list[RefEvent]:
    return [e for _, e in sorted(enumerate(events), key=lambda p: (p[1][2], p[0]))]


def _leads(events: list[RefEvent]) -> list[str]:
    return sorted({e[0] for e in events})


def absence(spec: AbsenceSpec, events: list[RefEvent], flush: bool = True) -> list[Fire]:
    fires: list[Fire] = []
    for lead in _leads(events):
        stream = [e for e in _sorted(events) if e[0] == lead]
        last_fire: int | None = None
        i = 0
        while i < len(stream):
            if stream[i][1] not in spec.when:
                i += 1
                continue
            # an episode opens at i; walk forward to find how it ends
            start = stream[i]
            deadline = start[2] + spec.within
            last = start
            end = None  # ("fire", index of the event that proves the deadline passed) or ("closed", index)
            j = i + 1
            while j < len(stream):
                e = stream[j]
                if e[2] > deadline:
                    end = ("fire", j)
                    break
                if e[1] in spec.unless:
                    end = ("closed", j)
                    break
                if e[1] in spec.when and spec.restart:
                    deadline = e[2] + spec.within
                    last = e
                j += 1
            if end is None and not flush:
                break
            if end is None or end[0] == "fire":
                if last_fire is None or deadline - last_fire >= spec.cooldown:
                    trigger = (start[3],) if last is start else (start[3], last[3])
                    fires.append((spec.id, lead, deadline, trigger))
                    last_fire = deadline
                if end is None:
                    break
                i = end[1]  # the event after the deadline is seen afresh: it may open the next episode
            else:
                closing = stream[end[1]]
                i = end[1] if closing[1] in spec.when else end[1] + 1
    return fires


def threshold(spec: ThresholdSpec, events: list[RefEvent]) -> list[Fire]:
    cooldown = spec.within if spec.cooldown is None else spec.cooldown
    fires: list[Fire] = []
    for lead in _leads(events):
        stream = [e for e in _sorted(events) if e[0] == lead and e[1] in spec.match]
        last_fire: int | None = None
        for i, e in enumerate(stream):
            in_window = [x for x in stream[: i + 1] if e[2] - spec.within < x[2] <= e[2]]
            if spec.count is not None:
                reached = len(in_window) >= spec.count
                used = in_window[-spec.count :]
            else:
                reached = sum(x[4] for x in in_window) >= spec.sum_gte
                used = in_window
            if reached and (last_fire is None or e[2] - last_fire >= cooldown):
                fires.append((spec.id, lead, e[2], tuple(x[3] for x in used)))
                last_fire = e[2]
    return fires


@dataclass(frozen=True)
class SequenceSpec:
    id: str
    steps: tuple[frozenset[str], ...]
    within: int


def sequence(spec: SequenceSpec, events: list[RefEvent]) -> list[tuple[str, str, int, str]]:
    """Fires at an event matching the last step when some chain of earlier, distinct events (after the previous
    firing) matched the steps in order and started at most `within` before; output: (rule, lead, at, last id)."""
    fires: list[tuple[str, str, int, str]] = []
    last = len(spec.steps) - 1
    for lead in _leads(events):
        stream = [e for e in _sorted(events) if e[0] == lead]
        after = -1  # chains may only use events after the previous firing
        for i, e in enumerate(stream):
            if e[1] not in spec.steps[last]:
                continue
            found = False
            for j0 in range(after + 1, i):
                if stream[j0][1] not in spec.steps[0] or e[2] - stream[j0][2] > spec.within:
                    continue
                k, j = 1, j0 + 1
                while k < last and j < i:  # greedy: the earliest match of each step leaves the most room
                    if stream[j][1] in spec.steps[k]:
                        k += 1
                    j += 1
                if k == last:
                    found = True
                    break
            if found:
                fires.append((spec.id, lead, e[2], e[3]))
                after = i
    return fires
