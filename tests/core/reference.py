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


# --- journeys ---------------------------------------------------------------------------------------------------
#
# A journey is interpreted on each lead's whole sorted timeline, one moment at a time, with nothing kept between
# leads and no code shared with engine.core: before each event every wake due strictly before it is taken in
# order (a wake that leads to another wait before the event is taken too), then the event: goal, exit_on, the
# wait_for it may let through, entry. Branch conditions read `traits.v` (the `v` of the lead's latest event).

JourneyFire = tuple[str, str, int, str, tuple[str, ...]]  # (journey, lead, fired_at, step, trigger)
# (lead, at, event, step, reason, entry time, message id)
JourneyRecord = tuple[str, int, str, str | None, str | None, int, str | None]


@dataclass(frozen=True)
class JStep:
    id: str
    kind: str  # send | wait | wait_for | branch | goto | end
    target: str | None = None  # goto; wait_for: then; branch: where `traits.v >= at` leads
    other: str | None = None  # wait_for: else; branch: the default (None: the next step)
    names: frozenset[str] = frozenset()  # wait_for: the event names it waits for
    duration: int = 0  # wait / wait_for within
    at: float = 0  # branch threshold on traits.v


@dataclass(frozen=True)
class JourneySpec:
    id: str
    entry: frozenset[str]
    exit_on: frozenset[str]
    steps: tuple[JStep, ...]
    never: bool = False
    goal: frozenset[str] = frozenset()
    goal_within: int = 7 * 86_400_000
    entry_min_v: float | None = None  # `if: {traits.v: {gte: X}}`


def journey(
    spec: JourneySpec, events: list[RefEvent], flush: bool = True, horizon: int = 0, ticks: int = 0
) -> tuple[list[JourneyFire], list[JourneyRecord]]:
    """Sends and records of one journey; the flush takes at most `ticks` deadlines per lead, none later than
    `horizon` after the lead's last event (the bounds `simulate` is given)."""
    fires: list[JourneyFire] = []
    records: list[tuple[int, str, int, JourneyRecord]] = []
    for lead in _leads(events):
        stream = [e for e in _sorted(events) if e[0] == lead]
        lead_fires, lead_records = _journey_of_lead(spec, lead, stream, flush, horizon, ticks)
        fires.extend(lead_fires)
        records.extend((r[1], lead, i, r) for i, r in enumerate(lead_records))
    records.sort(key=lambda item: item[:3])
    return fires, [item[3] for item in records]


def _journey_of_lead(
    spec: JourneySpec, lead: str, stream: list[RefEvent], flush: bool, horizon: int, ticks: int
) -> tuple[list[JourneyFire], list[JourneyRecord]]:
    fires: list[JourneyFire] = []
    out: list[JourneyRecord] = []
    index = {step.id: i for i, step in enumerate(spec.steps)}
    # the lead's journey: None (never entered, or left with nothing kept) or a dict
    where: dict | None = None
    latest_v = 0.0

    def following(step_id: str) -> str | None:
        i = index[step_id] + 1
        return spec.steps[i].id if i < len(spec.steps) else None

    def note(at: int, event: str, step: str | None, reason: str | None, cause: str | None) -> None:
        assert where is not None
        out.append((lead, at, event, step, reason, where["entry"], cause))

    def leave(at: int) -> None:
        nonlocal where
        assert where is not None
        if spec.goal and not where["goal_met"] and at <= where["entry"] + spec.goal_within:
            where = {**where, "step": None, "wake": where["entry"] + spec.goal_within}
        elif spec.never:
            where = {**where, "step": None, "wake": None}
        else:
            where = None

    def run(start: str | None, at: int, cause: str | None, arrived: str | None) -> None:
        nonlocal where
        assert where is not None
        current, last = start, where["step"]
        while True:
            if current is None:
                note(at, "completed", last, None, cause)
                return leave(at)
            step = spec.steps[index[current]]
            note(at, "reached", current, None, cause)
            last = current
            if step.kind == "send":
                trigger = (where["entry_id"],) if arrived is None else (where["entry_id"], arrived)
                fires.append((spec.id, lead, at, current, trigger))
                current = following(current)
            elif step.kind in ("wait", "wait_for"):
                where = {**where, "step": current, "since": at, "wake": at + step.duration}
                return None
            elif step.kind == "branch":
                if latest_v >= step.at:
                    current = step.target
                else:
                    current = step.other if step.other is not None else following(current)
            elif step.kind == "goto":
                current = step.target
            else:
                note(at, "completed", current, None, cause)
                return leave(at)

    def wake() -> None:
        nonlocal where
        assert where is not None and where["wake"] is not None
        at = where["wake"]
        if where["step"] is None:  # the goal window closed
            where = {**where, "wake": None} if spec.never else None
            return
        step = spec.steps[index[where["step"]]]
        if step.kind == "wait":
            run(following(step.id), at, None, None)
        else:
            run(step.other if step.other is not None else following(step.id), at, None, None)

    def due_before(t: int) -> bool:
        return where is not None and where["wake"] is not None and where["wake"] < t

    for _, name, ts, mid, value in stream:
        while due_before(ts):
            wake()
        latest_v = value
        left_now = False
        if (
            where is not None
            and spec.goal
            and not where["goal_met"]
            and where["entry"] <= ts <= where["entry"] + spec.goal_within
            and name in spec.goal
        ):
            note(ts, "goal", where["step"], None, mid)
            where = {**where, "goal_met": True}
            if where["step"] is None:
                where = {**where, "wake": None} if spec.never else None
        was_out = where is None or where["step"] is None
        if where is not None and where["step"] is not None and ts >= where["entry"]:
            step = spec.steps[index[where["step"]]]
            if name in spec.exit_on:
                note(ts, "exited", where["step"], "exit_on", mid)
                leave(ts)
                left_now = True
            elif step.kind == "wait_for" and ts >= where["since"] and name in step.names:
                run(step.target if step.target is not None else following(step.id), ts, mid, mid)
                left_now = where is None or where["step"] is None
        if (
            was_out
            and not left_now
            and not (spec.never and where is not None)
            and name in spec.entry
            and (spec.entry_min_v is None or value >= spec.entry_min_v)
        ):
            where = {"entry": ts, "entry_id": mid, "step": None, "since": ts, "wake": None, "goal_met": False}
            note(ts, "entered", None, None, mid)
            run(spec.steps[0].id, ts, mid, None)
    if flush and stream:
        limit = stream[-1][2] + horizon
        for _ in range(ticks):
            if where is None or where["wake"] is None or where["wake"] > limit:
                break
            wake()
    return fires, out
