"""Values the assignment subsystem hands to its callers (dispatcher, HTTP API, CLI): plain, immutable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.core.model import Action
from engine.events import format_ts


@dataclass(frozen=True, slots=True)
class Assignment:
    """A lead's owner. `created` is False when `assign` found an existing owner (idempotent call)."""

    lead_id: str
    rep_id: str
    name: str
    email: str
    slack_id: str | None
    strategy: str
    assigned_at_ms: int
    sla_deadline_ms: int | None
    created: bool = True
    previous_rep_id: str | None = None
    reassignments: int = 0
    acked_at_ms: int | None = None
    waited_ms: int | None = None  # time in the queue before this owner (None: assigned at once)
    links: dict[str, str] | None = None  # signed ack/pass links for this rep and lead (`links.RepLinks`)

    @property
    def assigned_at(self) -> str:
        return format_ts(self.assigned_at_ms)

    def rep_card(self) -> dict[str, Any]:
        return {"id": self.rep_id, "name": self.name, "email": self.email, "slack_id": self.slack_id}

    def to_json(self) -> dict[str, Any]:
        return {
            "lead_id": self.lead_id,
            "rep": self.rep_card(),
            "strategy": self.strategy,
            "assigned_at": self.assigned_at,
            "assigned_at_ms": self.assigned_at_ms,
            "sla_deadline_ms": self.sla_deadline_ms,
            "acked_at_ms": self.acked_at_ms,
            "previous_rep_id": self.previous_rep_id,
            "reassignments": self.reassignments,
            "waited_ms": self.waited_ms,
        }

    def lead_update(self) -> bytes:
        """Record for the `lead-updates` topic: kind "assigned" or "reassigned", `rep` = the owner's card. (Every
        change is also published from the store's outbox by `relay.ChangeRelay`; see docs/assignment.md.)"""
        return orjson.dumps(
            {
                **self.to_json(),
                "kind": "reassigned" if self.previous_rep_id else "assigned",
                "at_ms": self.assigned_at_ms,
            }
        )


@dataclass(frozen=True, slots=True)
class SlaBreach:
    """An assigned lead whose rep did not acknowledge it before `deadline_ms`."""

    lead_id: str
    rep_id: str
    assigned_at_ms: int
    deadline_ms: int
    reassignments: int


@dataclass(frozen=True, slots=True)
class Reassignment:
    """One SLA breach handled: the new owner (None: nobody else eligible) and the actions to deliver."""

    breach: SlaBreach
    assignment: Assignment | None
    notifications: tuple[Action, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class QueuedLead:
    """A hot lead waiting for a rep: every eligible rep was at capacity (or other leads were waiting already).
    `position` is 1-based (1 = next); `created` is False when the lead was waiting already."""

    lead_id: str
    position: int
    queued_at_ms: int
    created: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"lead_id": self.lead_id, "position": self.position, "queued_at_ms": self.queued_at_ms}


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a lead's assignment, as the history and the outbox keep it: `event` is assigned, reassigned,
    acked, passed, released, queued, dequeued, sla_extended or sla_exhausted; `by` says who made it (dispatcher,
    sla, queue, api, cli, link, inbox, lifecycle)."""

    lead_id: str
    entry: dict[str, Any]

    def lead_update(self) -> bytes:
        """The `lead-updates` record: the entry with `kind` = its event and the lead id (the ClickHouse sink keeps
        `kind`, `rep` and the whole record as payload)."""
        return orjson.dumps({**self.entry, "kind": self.entry.get("event", "changed"), "lead_id": self.lead_id})
