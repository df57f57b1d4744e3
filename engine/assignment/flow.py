"""The hot-lead flow as the dispatcher uses it: give an action's lead an owner before it is delivered."""

from __future__ import annotations

import dataclasses

from engine.assignment.assigner import Assigner
from engine.assignment.model import Assignment
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
    `context.owner` = the rep card, `payload.mention` = the Slack mention and `payload.ack_path`, plus the
    `Assignment`. None: nobody eligible now; the action is returned unchanged and is delivered without an owner
    (e.g. to the team channel). The action id is unchanged, so idempotency downstream still holds.
    `assignment.created` tells the caller whether this call made the assignment (then it may also publish
    `assignment.lead_update()` to `lead-updates`). Redis errors and `AssignmentContention` propagate.
    """
    assignment = await assigner.assign(action.lead_id, action.context)
    if assignment is None:
        return action, None
    card = assignment.rep_card()
    context = {**action.context, "owner": card}
    payload = {**action.payload, "mention": mention(card), "ack_path": ack_path(action.lead_id)}
    return dataclasses.replace(action, context=context, payload=payload), assignment
