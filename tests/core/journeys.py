"""Generated journeys for the hypothesis tests: a `JourneySpec` of the brute-force reference, its YAML, and events.

Every generated journey is valid by construction: jumps go forward, or back to a `wait`/`wait_for` step (so each
loop passes a wait), and steps nothing leads to are dropped (a reachable step's fall-through successor is
reachable, so dropping the others changes no "next step").
"""

from __future__ import annotations

from hypothesis import strategies as st

from engine.core.durations import format_duration
from engine.events import Event
from tests.core.reference import JourneySpec, JStep, RefEvent

MINUTE = 60_000
BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NAMES = ("A", "B", "C", "D")
KINDS = ("send", "send", "wait", "wait_for", "wait_for", "branch", "goto", "end")


def _names(values: frozenset[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in sorted(values)) + "]"


def _edges(step: JStep, following: str | None) -> list[str | None]:
    if step.kind in ("send", "wait"):
        return [following]
    if step.kind in ("wait_for", "branch"):
        return [step.target or following, step.other or following]
    if step.kind == "goto":
        return [step.target]
    return []


def _reachable(steps: list[JStep]) -> list[JStep]:
    index = {s.id: i for i, s in enumerate(steps)}
    seen, todo = {0}, [0]
    while todo:
        i = todo.pop()
        following = steps[i + 1].id if i + 1 < len(steps) else None
        for target in _edges(steps[i], following):
            if target is not None and index[target] not in seen:
                seen.add(index[target])
                todo.append(index[target])
    return [s for i, s in enumerate(steps) if i in seen]


@st.composite
def journey_steps(draw: st.DrawFn, max_steps: int = 7) -> tuple[JStep, ...]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=max_steps))
    kinds[0] = draw(st.sampled_from(("send", "wait", "wait_for", "branch")))
    ids = [f"s{i}" for i in range(len(kinds))]
    waits = [i for i, kind in enumerate(kinds) if kind in ("wait", "wait_for")]

    def target(i: int, optional: bool) -> str | None:
        choices: list[int] = [j for j in range(i + 1, len(kinds))] + [j for j in waits if j <= i]
        if optional and draw(st.booleans()):
            return None  # the next step
        return ids[draw(st.sampled_from(choices))] if choices else None

    steps = []
    for i, kind in enumerate(kinds):
        duration = draw(st.sampled_from((1, 5, 10, 30, 90))) * MINUTE
        if kind == "goto" and target(i, False) is None:
            kind = "end"
        if kind == "send":
            steps.append(JStep(ids[i], "send"))
        elif kind == "wait":
            steps.append(JStep(ids[i], "wait", duration=duration))
        elif kind == "wait_for":
            names = draw(st.frozensets(st.sampled_from(NAMES), min_size=1, max_size=2))
            steps.append(JStep(ids[i], "wait_for", target(i, True), target(i, True), names, duration))
        elif kind == "branch":
            jump = target(i, False)
            if jump is None:
                steps.append(JStep(ids[i], "send"))
            else:
                steps.append(JStep(ids[i], "branch", jump, target(i, True), at=draw(st.integers(0, 5))))
        elif kind == "goto":
            steps.append(JStep(ids[i], "goto", target(i, False)))
        else:
            steps.append(JStep(ids[i], "end"))
    kept = _reachable(steps)
    if not any(s.kind == "send" for s in kept):
        kept.insert(0, JStep("first", "send"))
    return tuple(kept)


@st.composite
def journey_specs(draw: st.DrawFn, index: int = 0) -> JourneySpec:
    return JourneySpec(
        id=f"journey_{index}",
        entry=draw(st.frozensets(st.sampled_from(NAMES), min_size=1, max_size=2)),
        exit_on=draw(st.frozensets(st.sampled_from(NAMES), max_size=1)),
        steps=draw(journey_steps()),
        never=draw(st.booleans()),
        goal=draw(st.frozensets(st.sampled_from(NAMES), max_size=1)),
        goal_within=draw(st.sampled_from((20, 60, 240))) * MINUTE,
        entry_min_v=draw(st.sampled_from((None, None, 1, 3))),
    )


def step_yaml(step: JStep) -> str:
    if step.kind == "send":
        return f"{{id: {step.id}, send: {{connector: email, template: {step.id}}}}}"
    if step.kind == "wait":
        return f"{{id: {step.id}, wait: {format_duration(step.duration)}}}"
    if step.kind == "wait_for":
        then = f", then: {step.target}" if step.target else ""
        otherwise = f", else: {step.other}" if step.other else ""
        matcher = f"event: {_names(step.names)}, within: {format_duration(step.duration)}"
        return f"{{id: {step.id}, wait_for: {{{matcher}}}{then}{otherwise}}}"
    if step.kind == "branch":
        default = f", {{goto: {step.other}}}" if step.other else ""
        return f"{{id: {step.id}, branch: [{{if: {{traits.v: {{gte: {step.at:g}}}}}, goto: {step.target}}}{default}]}}"
    if step.kind == "goto":
        return f"{{id: {step.id}, goto: {step.target}}}"
    return f"{{id: {step.id}, end: true}}"


def journey_yaml(spec: JourneySpec) -> str:
    lines = [
        f"  - id: {spec.id}",
        "    kind: journey",
        f"    entry: {{event: {_names(spec.entry)}}}",
        f"    re_entry: {'never' if spec.never else 'after_exit'}",
    ]
    if spec.exit_on:
        lines.append(f"    exit_on: {{event: {_names(spec.exit_on)}}}")
    if spec.goal:
        lines.append(f"    goal: {{event: {_names(spec.goal)}}}")
        lines.append(f"    goal_within: {format_duration(spec.goal_within)}")
    if spec.entry_min_v is not None:
        lines.append(f"    if: {{traits.v: {{gte: {spec.entry_min_v:g}}}}}")
    lines.append("    steps:")
    lines.extend(f"      - {step_yaml(step)}" for step in spec.steps)
    return "\n" + "\n".join(lines)


@st.composite
def streams(draw: st.DrawFn, leads: tuple[str, ...] = ("l1", "l2", "l3"), max_size: int = 30) -> list[RefEvent]:
    n = draw(st.integers(0, max_size))
    events = []
    for i in range(n):
        lead = draw(st.sampled_from(leads))
        name = draw(st.sampled_from(NAMES))
        ts = BASE + draw(st.integers(0, 180)) * MINUTE  # minute grid: ties and deadline-equal times are common
        events.append((lead, name, ts, f"m{i}", draw(st.integers(0, 5))))
    return events


def to_event(e: RefEvent) -> Event:
    lead, name, ts, message_id, value = e
    return Event(
        message_id=message_id,
        lead_id=lead,
        type="track",
        timestamp_ms=ts,
        name=name,
        user_id=lead,
        properties={"v": value},
        traits={"v": value},
    )
