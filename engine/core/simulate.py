"""`simulate(rules, events)`: the offline run of the core over a finite event log (`nudge simulate`, rule tests)."""

from __future__ import annotations

from collections.abc import Iterable

from engine.core.evaluate import evaluate
from engine.core.model import Action, Tick
from engine.core.ruleset import RuleSet
from engine.core.state import LeadState
from engine.events import Event


def simulate(
    rules: RuleSet,
    events: Iterable[Event],
    flush: bool = True,
    suppressed: list[tuple[int, str, str, str]] | None = None,
) -> list[Action]:
    """The actions the rules fire over `events`.

    - Events are stably sorted by event time (equal timestamps keep input order), then evaluated lead by lead
      with the same `evaluate` the worker uses: there is no second implementation of any rule semantics.
    - With `flush=True`, after the last event each lead's event time advances past its pending deadlines, so
      every absence that would fire, fires.
    - Output order: `(fired_at_ms, lead_id, order of firing within the lead)`, independent of how different
      leads' events interleave in the input, and identical on every run.
    - `suppressed`, when given, receives `(event time, lead id, rule id, reason)` for every firing a common gate
      stopped (`cooldown`, `max_per_lead`, `condition`), in evaluation order (`nudge simulate --explain`).
    """
    ordered = sorted(enumerate(events), key=lambda pair: (pair[1].timestamp_ms, pair[0]))
    states: dict[str, LeadState] = {}
    deadlines: dict[str, list[int]] = {}
    fired: list[tuple[int, str, int, Action]] = []
    sequence: dict[str, int] = {}

    def record(lead_id: str, actions: list[Action]) -> None:
        for action in actions:
            n = sequence.get(lead_id, 0)
            sequence[lead_id] = n + 1
            fired.append((action.fired_at_ms, lead_id, n, action))

    for _, event in ordered:
        result = evaluate(rules, states.get(event.lead_id), event, reuse_state=True)
        states[event.lead_id] = result.state
        deadlines[event.lead_id] = result.deadlines
        record(event.lead_id, result.actions)
        if suppressed is not None:
            suppressed.extend((event.timestamp_ms, event.lead_id, rule, why) for rule, why in result.suppressed)
    if flush:
        for lead_id in sorted(states):
            while deadlines.get(lead_id):
                now = deadlines[lead_id][-1]
                result = evaluate(rules, states[lead_id], Tick(now), reuse_state=True)
                states[lead_id] = result.state
                record(lead_id, result.actions)
                if suppressed is not None:
                    suppressed.extend((now, lead_id, rule, why) for rule, why in result.suppressed)
                # a tick fires every deadline <= now: what is left lies later (never loop on one deadline)
                deadlines[lead_id] = [t for t in result.deadlines if t > now]
    fired.sort(key=lambda item: item[:3])
    return [item[3] for item in fired]
