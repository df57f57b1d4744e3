"""SLA enforcement: a hot lead not acknowledged in time moves to another rep, and both reps hear about it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from engine import metrics
from engine.assignment.assigner import Assigner
from engine.assignment.model import Reassignment, SlaBreach
from engine.assignment.notifications import reassignment_actions, sla_missed_actions
from engine.core.model import Action

log = logging.getLogger(__name__)


class SlaMonitor:
    """Turns due SLA breaches into reassignments plus the notifications for both reps; delivers nothing itself
    (the caller hands the actions to the dispatcher, or produces them to `actions`).

    - Breach with another eligible rep and fewer than `sla.max_reassignments` moves → reassigned (new SLA clock);
      actions: Slack to both, email to the new owner, email to the previous owner.
    - Breach with nobody else eligible → the owner keeps the lead, its clock restarts (`ack_within` again), and the
      owner gets a `lead_sla_missed` reminder. Breach after `max_reassignments` moves → the clock stops, same
      reminder.
    - Several monitors may run at once (one per dispatcher): the reassignment is conditional on the owner being the
      one that breached (Lua, see `AssignmentStore`), so a breach is acted upon once; the loser gets None and emits
      nothing.
    """

    def __init__(self, assigner: Assigner) -> None:
        self.assigner = assigner

    async def handle(self, breach: SlaBreach) -> Reassignment | None:
        assigner = self.assigner
        lead = await assigner.lead_of(breach.lead_id)
        rep = assigner.roster.rep(breach.rep_id)
        previous = (
            rep.card()
            if rep
            else {"id": breach.rep_id, "name": breach.rep_id, "email": None, "slack_id": None}
        )
        now_ms = assigner.now_ms()
        policy = assigner.roster.sla
        links = assigner.links.for_assignment(breach.lead_id, breach.rep_id) if assigner.links else None
        if breach.reassignments >= policy.max_reassignments:
            if not await assigner.set_deadline(breach.lead_id, breach.rep_id, None, "sla_exhausted"):
                return None
            metrics.SLA_BREACHES.labels("exhausted").inc()
            why = f"moved {breach.reassignments} times already; no further automatic reassignment"
            return Reassignment(breach, None, sla_missed_actions(breach, previous, lead, now_ms, why, links))
        new = await assigner.reassign(breach.lead_id, "sla", breach=breach)
        if new is not None:
            metrics.SLA_BREACHES.labels("reassigned").inc()
            return Reassignment(breach, new, reassignment_actions(breach, new, previous, lead, now_ms))
        restarted = now_ms + int(policy.ack_within_s * 1000)
        if not await assigner.set_deadline(breach.lead_id, breach.rep_id, restarted, "sla_extended"):
            return None  # acknowledged or moved meanwhile: nothing to say
        metrics.SLA_BREACHES.labels("kept").inc()
        why = "no other rep is available right now"
        return Reassignment(breach, None, sla_missed_actions(breach, previous, lead, now_ms, why, links))

    async def run_once(self) -> list[Reassignment]:
        """Handle every lead whose ack deadline has passed (per the assigner's clock); one `Reassignment` per
        breach acted upon here, carrying the `Action`s to deliver. Redis errors propagate.
        """
        done = []
        for breach in await self.assigner.due_sla_breaches():
            outcome = await self.handle(breach)
            if outcome is not None:
                done.append(outcome)
        return done

    async def run(
        self, deliver: Callable[[Sequence[Action]], Awaitable[None]], interval_s: float = 1.0
    ) -> None:
        """Every `interval_s`, enforce and hand the actions to `deliver`. Errors are logged, not fatal."""
        while True:
            try:
                for outcome in await self.run_once():
                    await deliver(outcome.notifications)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis down or a deliver failure: keep the loop alive, the breach stays due
                log.exception("SLA pass failed; retrying in %.1fs", interval_s)
            await asyncio.sleep(interval_s)
