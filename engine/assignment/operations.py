"""What reps and operators do to a lead (acknowledge, pass, release, reassign to a named rep), each with its
consequences: the reps concerned are told, and capacity that frees up goes to the queue at once. Shared by the /v1
API, the inbox, the signed links and the CLI, so they all behave the same."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from engine.assignment.assigner import AckResult, Assigner, PassResult
from engine.assignment.model import Assignment
from engine.assignment.notifications import assignment_actions, reassignment_actions
from engine.assignment.store import ReleaseResult
from engine.core.model import Action

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Action]], Awaitable[None]]


class RepOperations:
    """Contract: each method makes its change through the `Assigner` (atomic in Redis, recorded in the history and
    the outbox) and then hands the notifications it implies to `publish` (in `nudge reps serve`: produce to the
    `actions` topic for the dispatcher). A failed publish is logged and not retried: the change stands (as for SLA
    notifications, messages are at most once; the change itself exactly once). Methods that free capacity (pass,
    release) drain the queue right away, so a waiting lead gets the slot before the next pass of the service."""

    def __init__(self, assigner: Assigner, publish: Publish) -> None:
        self.assigner = assigner
        self._publish = publish

    async def publish(self, actions: Sequence[Action]) -> None:
        if not actions:
            return
        try:
            await self._publish(actions)
        except Exception:  # the change stands; only its messages are lost (see the class docstring)
            log.exception("could not publish %d notifications for lead %s", len(actions), actions[0].lead_id)

    async def ack(self, lead_id: str, rep_id: str, by: str) -> AckResult:
        return await self.assigner.ack_detail(lead_id, rep_id, by=by)

    async def pass_lead(self, lead_id: str, rep_id: str, by: str) -> PassResult:
        result = await self.assigner.pass_lead(lead_id, rep_id, by=by)
        if result.assignment is not None:
            await self._tell_move(result.assignment, rep_id, "passed")
        if result.status in ("moved", "queued"):
            await self.drain()
        return result

    async def release(
        self, lead_id: str, rep_id: str | None, by: str, reason: str = "", not_after_ms: int | None = None
    ) -> ReleaseResult:
        result = await self.assigner.release(
            lead_id, reason=reason or by, by=by, expected_rep=rep_id, not_after_ms=not_after_ms
        )
        if result.status == "released":
            await self.drain()
        return result

    async def reassign_to(
        self, lead_id: str, rep_id: str, by: str, force: bool = False
    ) -> tuple[Assignment | None, str]:
        """See `Assigner.reassign_to` (raises `UnknownRep`)."""
        previous = await self.assigner.owner(lead_id)
        assignment, why = await self.assigner.reassign_to(lead_id, rep_id, by=by, force=force)
        if assignment is not None and why == "ok":
            if previous is not None:
                await self._tell_move(assignment, previous.rep_id, "named")
                await self.drain()
            else:
                await self.publish(assignment_actions(assignment, await self.assigner.lead_of(lead_id),
                                                      self.assigner.now_ms()))  # fmt: skip
        return assignment, why

    async def drain(self) -> list[Assignment]:
        """Assign waiting leads while capacity lasts; each new owner gets the Slack note and the email."""
        assigned = await self.assigner.drain_queue()
        for assignment in assigned:
            lead = await self.assigner.lead_of(assignment.lead_id)
            await self.publish(assignment_actions(assignment, lead, self.assigner.now_ms()))
        return assigned

    async def _tell_move(self, assignment: Assignment, previous_rep: str, reason: str) -> None:
        rep = self.assigner.roster.rep(previous_rep)
        previous = rep.card() if rep else {"id": previous_rep, "name": previous_rep, "email": None, "slack_id": None}
        lead = await self.assigner.lead_of(assignment.lead_id)
        now_ms = self.assigner.now_ms()
        await self.publish(reassignment_actions(None, assignment, previous, lead, now_ms, reason=reason))
