"""`simulate(rules, events)`: the offline run of the core over a finite event log (`nudge simulate`, rule tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.core.evaluate import evaluate
from engine.core.model import Action, Tick
from engine.core.ruleset import RuleSet
from engine.core.state import LeadState
from engine.events import Event

# The flush's bounds: a journey may loop through its waits forever (a weekly digest), so the flush stops at
# FLUSH_HORIZON_MS after the lead's last event, and after FLUSH_TICKS deadline ticks of one lead, whichever comes
# first; deadlines later than that stay pending, as with `flush=False`.
FLUSH_HORIZON_MS = 366 * 86_400_000
FLUSH_TICKS = 1_000


def simulate(
    rules: RuleSet,
    events: Iterable[Event],
    flush: bool = True,
    suppressed: list[tuple[int, str, str, str]] | None = None,
    updates: list[dict[str, Any]] | None = None,
    *,
    flush_horizon_ms: int = FLUSH_HORIZON_MS,
    flush_ticks: int = FLUSH_TICKS,
) -> list[Action]:
    """The actions the rules fire over `events`.

    - Events are stably sorted by event time (equal timestamps keep input order), then evaluated lead by lead
      with the same `evaluate` the worker uses: there is no second implementation of any rule semantics.
    - With `flush=True`, after the last event each lead's event time advances through its pending deadlines,
      earliest first (one tick per deadline), so every absence that would fire fires and journeys run on to
      their ends — bounded: up to `flush_horizon_ms` (default 366 days) after the lead's last event and at most
      `flush_ticks` (default 1,000) ticks per lead, so a journey that loops through waits forever still ends.
    - Output order: `(fired_at_ms, lead_id, order of firing within the lead)`, independent of how different
      leads' events interleave in the input, and identical on every run.
    - `suppressed`, when given, receives `(event time, lead id, rule id, reason)` for every firing a common gate
      stopped (`cooldown`, `max_per_lead`, `condition`), in evaluation order (`nudge simulate --explain`).
    - `updates`, when given, receives the `lead-updates` records (`Evaluation.updates`: stage changes,
      conversions, consent, journey records) ordered like the actions: by `(at_ms, lead_id, order within the
      lead)`.
    """
    ordered = sorted(enumerate(events), key=lambda pair: (pair[1].timestamp_ms, pair[0]))
    states: dict[str, LeadState] = {}
    deadlines: dict[str, list[int]] = {}
    last_event: dict[str, int] = {}
    fired: list[tuple[int, str, int, Action]] = []
    recorded: list[tuple[int, str, int, dict[str, Any]]] = []
    sequence: dict[str, int] = {}

    def record(lead_id: str, actions: list[Action], changes: list[dict[str, Any]]) -> None:
        for action in actions:
            n = sequence.get(lead_id, 0)
            sequence[lead_id] = n + 1
            fired.append((action.fired_at_ms, lead_id, n, action))
        if updates is not None:
            for change in changes:
                n = sequence.get(lead_id, 0)
                sequence[lead_id] = n + 1
                recorded.append((change["at_ms"], lead_id, n, change))

    for _, event in ordered:
        result = evaluate(rules, states.get(event.lead_id), event, reuse_state=True)
        states[event.lead_id] = result.state
        deadlines[event.lead_id] = result.deadlines
        last_event[event.lead_id] = event.timestamp_ms
        record(event.lead_id, result.actions, result.updates)
        if suppressed is not None:
            suppressed.extend((event.timestamp_ms, event.lead_id, rule, why) for rule, why in result.suppressed)
    if flush:
        for lead_id in sorted(states):
            horizon = last_event[lead_id] + flush_horizon_ms
            for _ in range(flush_ticks):
                pending = deadlines.get(lead_id)
                if not pending or pending[0] > horizon:
                    break
                now = pending[0]
                result = evaluate(rules, states[lead_id], Tick(now), reuse_state=True)
                states[lead_id] = result.state
                record(lead_id, result.actions, result.updates)
                if suppressed is not None:
                    suppressed.extend((now, lead_id, rule, why) for rule, why in result.suppressed)
                # a tick fires every deadline <= now: what is left lies later (never loop on one deadline)
                deadlines[lead_id] = [t for t in result.deadlines if t > now]
    fired.sort(key=lambda item: item[:3])
    if updates is not None:
        recorded.sort(key=lambda item: item[:3])
        updates.extend(item[3] for item in recorded)
    return [item[3] for item in fired]
