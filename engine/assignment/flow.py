"""The hot-lead flow as the dispatcher uses it: give an action's lead an owner before it is delivered."""

from __future__ import annotations

import dataclasses

from engine.assignment.assigner import Assigner
from engine.assignment.model import Assignment, QueuedLead
from engine.assignment.notifications import ack_path, mention
from engine.core.model import Action

HOT_LEAD_TEMPLATES = frozenset({"hot_lead"})
ASSIGN_STAGES = frozenset({"SQL", "sql"})


def wants_owner(action: Action) -> bool:
    """Is this a hot-lead alert that needs a rep? Its payload says `"assign": true`, or its template is one
    of `HOT_LEAD_TEMPLATES`, or the lead's stage in the context is one of `ASSIGN_STAGES` (a lead reaching SQL).
    Marketing actions to the lead never need one.
    """
    if action.marketing:
        return False
    if action.payload.get("assign") is True or action.template in HOT_LEAD_TEMPLATES:
        return True
    return action.context.get("stage") in ASSIGN_STAGES


async def with_owner(assigner: Assigner, action: Action) -> tuple[Action, Assignment | None]:
    """Assign the action's lead (idempotent: the existing owner when there is one) and return the action with
    `context.owner` = the rep card, `payload.mention` = the Slack mention, `payload.ack_path` and, when the
    assigner has signed links, `payload.links` = `{"ack", "pass", "inbox"}` URLs for the rep, plus the
    `Assignment`. When no rep can take the lead now (or other leads wait already) the lead joins the queue: the
    action comes back with `payload.queued` = `{"lead_id", "position", "queued_at_ms"}` and None, and is delivered
    without an owner (e.g. to the team channel); `nudge reps serve` assigns it when capacity frees and tells the rep
    then. The action id is unchanged, so idempotency downstream still holds.
    The lead stored with the owner (and shown in the rep's inbox) is the action's context plus `explanation` (why
    the alert fired), `priority` (orders the queue) and `alert` (rule, template, action id, fire time).
    `assignment.created` tells the caller whether this call made the assignment (then it may also publish
    `assignment.lead_update()` to `lead-updates`). Redis errors and `AssignmentContention` propagate.
    """
    lead = {
        **action.context,
        "explanation": action.explanation,
        "priority": action.priority,
        "alert": {
            "rule": action.rule,
            "template": action.template,
            "action_id": action.action_id,
            "fired_at_ms": action.fired_at_ms,
        },
    }
    placed = await assigner.assign_or_queue(action.lead_id, lead)
    if isinstance(placed, QueuedLead):
        return dataclasses.replace(action, payload={**action.payload, "queued": placed.to_json()}), None
    assignment = placed
    card = assignment.rep_card()
    context = {**action.context, "owner": card}
    payload = {**action.payload, "mention": mention(card), "ack_path": ack_path(action.lead_id)}
    if assignment.links:
        payload["links"] = assignment.links
    return dataclasses.replace(action, context=context, payload=payload), assignment
