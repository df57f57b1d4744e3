"""Assignment of hot leads to sales reps: roster, strategies, atomic Redis state, SLA, HTTP endpoints.

Use from the dispatcher (or any process with Redis):

    assigner = Assigner(redis.asyncio.Redis.from_url(settings.redis_url), load_roster(settings.reps_path))
    if wants_owner(action):                                  # hot-lead alert, or the lead reached SQL
        action, assignment = await with_owner(assigner, action)   # idempotent; context.owner = the rep
    await assigner.ack(lead_id, rep_id)                      # POST /v1/leads/{id}/ack does this
    for outcome in await SlaMonitor(assigner).run_once():    # missed SLA: reassigned, both reps notified
        deliver(outcome.notifications)
    await assigner.release(lead_id)                          # lead closed: frees the rep's capacity

`nudge reps serve` (`service.AssignmentService`) runs the HTTP routes and the SLA loop as a process.
Modules: `roster` (YAML → `Roster`), `strategies` (pure choice), `store` (Redis + Lua), `assigner`
(`Assigner`), `sla` (`SlaMonitor`), `notifications` (the `Action`s to reps), `flow` (the dispatcher hook),
`api` (aiohttp routes), `service` (the process), `model` (value types).

May import `engine.core` (the `Action` it builds), `engine.events`, `engine.kafka`, `engine.config`,
`engine.metrics`, Redis, aiohttp, pydantic and PyYAML; nothing of the worker, the dispatcher, the sink, the
collector or connectors (the dispatcher calls in, via `flow`).
"""

from engine.assignment.assigner import AckResult, Assigner, AssignmentContention, RepStatus, UnknownRep
from engine.assignment.flow import wants_owner, with_owner
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
    "wants_owner",
    "with_owner",
]
