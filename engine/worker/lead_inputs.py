"""One lead's inputs of a batch, evaluated in order through the pure core: what the worker shell then writes and
sends. No I/O."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core import LeadState, RuleSet, evaluate, pending_deadlines
from engine.core.model import Action, Tick
from engine.events import Event
from engine.privacy.records import WorkerRequest
from engine.worker.handovers import Handover, HandoverRecord, MergeIn

log = logging.getLogger(__name__)

# One input: the consumed record (None for a tick or a hand-over the worker made itself), the event, tick,
# hand-over record or privacy request (the shell applies those itself, see `LeadWorker`), and the deadline a tick
# is for.
Input = tuple[Any, Event | Tick | HandoverRecord | WorkerRequest, int | None]
IDENTITY_EVENTS = ("identify", "alias")


class InPlaceFailed(Exception):
    """The core raised while updating a state in place: the lead is redone on copies."""


@dataclass
class LeadOutcome:
    """What one `LeadEvaluator.run` produced, for the shell to write and send."""

    state: LeadState | None  # None: nothing to store (e.g. the state was handed over)
    deadlines: Sequence[int] | None = None  # all pending deadlines when they changed; None: unchanged
    actions: list[tuple[Action, str]] = field(default_factory=list)  # with what fired it: "event" or "deadline"
    updates: list[dict[str, Any]] = field(default_factory=list)  # stage changes, for `lead-updates`
    merges_out: list[tuple[str, bytes]] = field(default_factory=list)  # (known id, this lead's state)
    handovers: list[tuple[str, str, int]] = field(default_factory=list)  # (anonymous id, known id, event time)
    fired_deadlines: list[int] = field(default_factory=list)  # deadlines of the ticks evaluated
    suppressed: list[tuple[str, str]] = field(default_factory=list)  # (rule id, reason) a common gate stopped
    rejected: list[tuple[Any, Any, str, str]] = field(default_factory=list)  # (record, input, reason, detail)


@dataclass(frozen=True)
class LeadEvaluator:
    """Evaluates one lead's inputs against `rules`; pure apart from logging, safe to share."""

    rules: RuleSet

    def run(self, lead_id: str, state: LeadState | None, inputs: list[Input], in_place: bool) -> LeadOutcome:
        """Evaluate `inputs` (the lead's events, deadline ticks and hand-over records of one batch, in arrival
        order) from `state` (the decoded state; None for a new lead).

        With `in_place=True` the core updates `state` itself (saving one deep copy per lead per batch), and the
        first input the core raises on aborts the run with `InPlaceFailed`: `state` may then be half-updated, so
        the caller decodes it afresh and runs again with `in_place=False`, where each failing input is rejected
        alone (reason `evaluation_error`, or `merge_error` for a state that cannot be merged) and evaluation goes
        on. Raises nothing else for bad input.

        Events are evaluated at their own time (replays give the same actions); deadlines fire only on ticks, so
        each firing has one deterministic place. A hand-over empties the state (the outcome's state is None).
        """
        out = LeadOutcome(state)
        for source, item, deadline_ms in inputs:
            is_event = isinstance(item, Event)
            if is_event:
                if item.type in IDENTITY_EVENTS:
                    other = item.previous_id if item.type == "alias" else item.anonymous_id
                    if other and other != lead_id:
                        out.handovers.append((other, lead_id, item.timestamp_ms))
            elif isinstance(item, Handover):
                if out.state is not None:
                    out.merges_out.append((item.to_lead, out.state.to_bytes()))
                    out.state, out.deadlines = None, []
                continue
            elif isinstance(item, MergeIn):
                try:
                    out.state = self._merge(lead_id, out.state, item)
                except Exception as exc:  # a state we cannot merge is kept in the dead letter, not lost
                    log.exception("merge into lead %s failed", lead_id)
                    out.rejected.append((source, item, "merge_error", f"{type(exc).__name__}: {exc}"))
                    continue
                out.deadlines = pending_deadlines(self.rules, out.state)
                continue
            now_ms = item.now_ms if isinstance(item, Tick) else None
            try:
                result = evaluate(self.rules, out.state, item, now_ms, reuse_state=in_place)
            except Exception as exc:  # a core bug must cost one input, never the worker
                if in_place:
                    raise InPlaceFailed from exc
                log.exception("evaluation failed for lead %s", lead_id)
                out.rejected.append((source, item, "evaluation_error", f"{type(exc).__name__}: {exc}"))
                continue
            out.state, out.deadlines = result.state, result.deadlines
            if deadline_ms is not None:
                out.fired_deadlines.append(deadline_ms)
            if result.actions:
                kind = "event" if is_event else "deadline"
                out.actions.extend((action, kind) for action in result.actions)
            if result.updates:
                out.updates.extend(result.updates)
            if result.suppressed:
                out.suppressed.extend(result.suppressed)
        return out

    def _merge(self, lead_id: str, state: LeadState | None, item: MergeIn) -> LeadState:
        other = LeadState.from_bytes(item.state)
        base = state if state is not None else LeadState(lead_id)
        return base.merge(other, self.rules)
