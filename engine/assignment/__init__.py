"""Assignment of hot leads to sales reps: roster, strategies, atomic Redis state, SLA reassignment, HTTP
endpoints.

Use from the dispatcher (or any process with Redis):

    roster = load_roster(settings.reps_path)
    assigner = Assigner(redis.asyncio.Redis.from_url(settings.redis_url), roster)   # strategy: roster default
    assignment = await assigner.assign(action.lead_id, action.context)   # idempotent; None = nobody eligible
    actions = assignment_actions(assignment, action.context, now_ms)     # Slack alert + email to the rep
    ...
    await assigner.ack(lead_id, rep_id)          # POST /v1/leads/{id}/ack does this
    for r in await SlaMonitor(assigner).run_once():   # reassign after a missed SLA; r.notifications to
    deliver
        ...
    await assigner.release(lead_id)              # lead closed (won/lost): frees the rep's capacity

Modules: `roster` (YAML → `Roster`), `strategies` (pure choice), `store` (Redis + Lua), `assigner`
(`Assigner`), `sla` (`SlaMonitor`), `notifications` (the `Action`s to reps), `api` (aiohttp routes), `model`
(value types).
"""

from engine.assignment.assigner import AckResult, Assigner, AssignmentContention, RepStatus, UnknownRep
from engine.assignment.model import Assignment, Reassignment, SlaBreach
from engine.assignment.notifications import assignment_actions, reassignment_actions
from engine.assignment.roster import Rep, Roster, RosterError, load_roster, parse_roster
from engine.assignment.sla import SlaMonitor

__all__ = [
    "AckResult",
    "Assigner",
    "Assignment",
    "AssignmentContention",
    "Reassignment",
    "Rep",
    "RepStatus",
    "Roster",
    "RosterError",
    "SlaBreach",
    "SlaMonitor",
    "UnknownRep",
    "assignment_actions",
    "load_roster",
    "parse_roster",
    "reassignment_actions",
]
