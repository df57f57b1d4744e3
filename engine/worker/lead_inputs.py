"""One lead's inputs of a batch, evaluated in order: what the worker shell then writes and sends. No I/O.

Contract of `LeadEvaluator.run(lead_id, state, inputs, in_place)`:
- `inputs` are the lead's events, deadline ticks and identity control records of one batch, in arrival order;
  `state` is the lead's decoded state (None for a new lead).
- With `in_place=True` the core updates `state` itself (one deep copy per lead per batch saved); the first input the
  core raises on aborts with `InPlaceFailed`, and the caller runs the lead again from a fresh decode with
  `in_place=False`, where each failing input is rejected alone and evaluation goes on.
- The outcome holds the final state (None: the lead's state was handed over), its pending deadlines when they
  changed, the actions with what fired them ("event" or "deadline"), stage updates, merge records to send, identity
  hand-overs found in identify/alias events, the deadlines that ticks fired (for the lag metric) and the rejected
  inputs with a reason code and detail (for dead letters).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core import LeadState, RuleSet, evaluate, pending_deadlines
from engine.core.model import Action, Tick
from engine.events import Event
from engine.worker.handovers import Control, Handover, MergeIn

log = logging.getLogger(__name__)

# One input: the consumed record (None for a tick the deadline timer evaluates), the event or control record, and
# the deadline a tick is for.
Input = tuple[Any, Event | Tick | Control, int | None]
IDENTITY_EVENTS = ("identify", "alias")


class InPlaceFailed(Exception):
    """The core raised while updating a state in place: the lead is redone on copies."""


@dataclass
class LeadOutcome:
    state: LeadState | None
    deadlines: Sequence[int] | None = None  # None: unchanged
    actions: list[tuple[Action, str]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # stage changes, for `lead-updates`
    merges_out: list[tuple[str, bytes]] = field(default_factory=list)  # (known id, this lead's state)
    handovers: list[tuple[str, str, int]] = field(default_factory=list)  # (anonymous id, known id, event time)
    fired_deadlines: list[int] = field(default_factory=list)  # deadlines of the ticks evaluated
    rejected: list[tuple[Any, Any, str, str]] = field(default_factory=list)  # (record, input, reason, detail)


@dataclass(frozen=True)
class LeadEvaluator:
    rules: RuleSet

    def run(self, lead_id: str, state: LeadState | None, inputs: list[Input], in_place: bool) -> LeadOutcome:
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
            # Events are evaluated at their own time (replays give the same actions); deadlines up to the
            # watermark are fired by ticks, so each firing has one deterministic place.
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
        return out

    def _merge(self, lead_id: str, state: LeadState | None, item: MergeIn) -> LeadState:
        other = LeadState.from_bytes(item.state)
        base = state if state is not None else LeadState(lead_id)
        return base.merge(other, self.rules)
