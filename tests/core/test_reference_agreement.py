"""The core agrees with the brute-force reference (tests/core/reference.py) on thousands of streams."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import simulate
from engine.core.durations import format_duration
from engine.events import Event
from engine.language import parse_rules
from tests.core import reference
from tests.core.reference import AbsenceSpec, RefEvent, SequenceSpec, ThresholdSpec

MINUTE = 60_000
BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NAMES = ("A", "B", "C")


def _names(values: frozenset[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in sorted(values)) + "]"


def absence_yaml(spec: AbsenceSpec) -> str:
    unless = f"\n    unless: {{event: {_names(spec.unless)}}}" if spec.unless else ""
    return f"""
  - id: {spec.id}
    kind: absence
    when: {{event: {_names(spec.when)}}}{unless}
    within: {format_duration(spec.within)}
    restart: {str(spec.restart).lower()}
    cooldown: {format_duration(spec.cooldown) if spec.cooldown else "0s"}
    action: {{connector: log}}"""


def threshold_yaml(spec: ThresholdSpec) -> str:
    measure = f"count: {spec.count}" if spec.count is not None else f"sum: {{field: properties.v, gte: {spec.sum_gte}}}"
    cooldown = "" if spec.cooldown is None else f"\n    cooldown: {format_duration(spec.cooldown) or '0s'}"
    return f"""
  - id: {spec.id}
    kind: threshold
    match: {{event: {_names(spec.match)}}}
    {measure}
    within: {format_duration(spec.within)}{cooldown}
    action: {{connector: log}}"""


def sequence_yaml(spec: SequenceSpec) -> str:
    steps = "".join(f"\n      - {{event: {_names(step)}}}" for step in spec.steps)
    return f"""
  - id: {spec.id}
    kind: sequence
    steps:{steps}
    within: {format_duration(spec.within)}
    action: {{connector: log}}"""


name_sets = st.frozensets(st.sampled_from(NAMES), min_size=1, max_size=2)
minutes = st.integers(1, 40).map(lambda m: m * MINUTE)


@st.composite
def absence_specs(draw: st.DrawFn, index: int) -> AbsenceSpec:
    when = draw(name_sets)
    unless = draw(st.frozensets(st.sampled_from(NAMES), max_size=2))
    cooldown = draw(st.sampled_from([0, 0, 10 * MINUTE, 60 * MINUTE]))
    return AbsenceSpec(f"absence_{index}", when, unless, draw(minutes), draw(st.booleans()), cooldown)


@st.composite
def threshold_specs(draw: st.DrawFn, index: int) -> ThresholdSpec:
    match = draw(name_sets)
    cooldown = draw(st.sampled_from([None, None, 0, 5 * MINUTE, 30 * MINUTE]))
    if draw(st.booleans()):
        return ThresholdSpec(
            f"threshold_{index}", match, draw(minutes), count=draw(st.integers(1, 4)), cooldown=cooldown
        )
    return ThresholdSpec(
        f"threshold_{index}", match, draw(minutes), sum_gte=draw(st.integers(1, 12)), cooldown=cooldown
    )


sequence_specs = st.builds(
    SequenceSpec,
    st.just("sequence_0"),
    st.lists(st.frozensets(st.sampled_from(NAMES), min_size=1, max_size=2), min_size=2, max_size=3).map(tuple),
    minutes,
)


@st.composite
def streams(draw: st.DrawFn) -> list[RefEvent]:
    n = draw(st.integers(0, 30))
    events = []
    for i in range(n):
        lead = draw(st.sampled_from(("l1", "l2", "l3")))
        name = draw(st.sampled_from(NAMES))
        ts = BASE + draw(st.integers(0, 120)) * MINUTE  # minute grid: ties and deadline-equal times are common
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
    )


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.tuples(st.tuples(absence_specs(0), absence_specs(1)), st.tuples(threshold_specs(0), threshold_specs(1))),
    sequence_specs,
    streams(),
    st.booleans(),
)
def test_core_agrees_with_brute_force_reference(
    specs, sequence_spec: SequenceSpec, events: list[RefEvent], flush: bool
) -> None:
    absences, thresholds = specs
    text = "rules:" + "".join(absence_yaml(s) for s in absences) + "".join(threshold_yaml(s) for s in thresholds)
    text += sequence_yaml(sequence_spec)
    rules = parse_rules(text)
    actions = simulate(rules, [to_event(e) for e in events], flush=flush)
    got = sorted((a.rule, a.lead_id, a.fired_at_ms, a.trigger) for a in actions if a.rule != sequence_spec.id)
    expected = [fire for s in absences for fire in reference.absence(s, events, flush)]
    expected += [fire for s in thresholds for fire in reference.threshold(s, events)]
    assert got == sorted(expected), text
    got_sequence = sorted(
        (a.rule, a.lead_id, a.fired_at_ms, a.trigger[-1]) for a in actions if a.rule == sequence_spec.id
    )
    assert all(len(a.trigger) == len(sequence_spec.steps) for a in actions if a.rule == sequence_spec.id)
    assert got_sequence == sorted(reference.sequence(sequence_spec, events)), text
