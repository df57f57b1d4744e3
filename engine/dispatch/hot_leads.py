"""The hot-lead flow inside the dispatcher: give a hot lead an owner before its alert is delivered, tell the rep,
and free the rep when the lead is won."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.assignment import Assigner, AssignmentContention, RosterError, load_roster, wants_owner, with_owner
from engine.assignment.links import RepLinks
from engine.assignment.notifications import RULE as NOTIFICATION_RULE
from engine.assignment.notifications import assignment_actions
from engine.config import ConfigError, Settings
from engine.core.model import Action

logger = logging.getLogger("nudge.dispatcher")

Deliver = Callable[[Action], Awaitable[None]]
Publish = Callable[[str, bytes], Awaitable[None]]


def build_assigner(settings: Settings, redis: Redis) -> Assigner | None:
    """The assigner for `settings.reps_path`, or None (with a warning: actions then go out without an owner) when
    there is no roster file. An invalid roster raises `ConfigError` at start: an operator must fix it."""
    path = settings.reps_path
    if not path.exists():
        logger.warning(
            "no reps roster at %s (NUDGE_REPS_PATH): hot-lead alerts are delivered without assigning a rep", path
        )
        return None
    try:
        return Assigner(redis, load_roster(path), links=RepLinks.from_settings(settings))
    except RosterError as exc:
        raise ConfigError(f"{exc} (fix the roster file or point NUDGE_REPS_PATH at another one)") from exc


class HotLeads:
    """Run by the dispatcher on every action, before delivery (`prepare`). Every step is idempotent, so the
    dispatcher may retry a whole action."""

    def __init__(
        self, assigner: Assigner | None, deliver: Deliver, publish: Publish, connectors: Collection[str]
    ) -> None:
        self.assigner = assigner
        self.deliver = deliver
        self.publish = publish
        self.connectors = connectors

    async def prepare(self, action: Action) -> Action:
        """The action to deliver, after the hot-lead steps it asks for.

        - An action that `engine.assignment.wants_owner` (payload `assign: true`, template `hot_lead`, or a lead
          at stage sql) gets its owner: `with_owner` assigns the lead (idempotent across processes: the existing
          owner when there is one) and the action comes back with `context.owner` and `payload.mention`, so the
          Slack alert mentions the rep. The rep's notifications (`assignment_actions`: an email to the rep, and a
          Slack `lead_assigned` message when the action that made the assignment is not a Slack message) are
          delivered right here, for the connectors that exist. Their action ids are deterministic per assignment,
          so a redelivered alert, or a later alert for the same owner, never mails the rep twice. The assignment
          itself reaches `lead-updates` through the assignment store's outbox (published by `nudge reps serve`),
          whichever process made it.
        - `release_owner: true` in the payload (rules/leads.yaml sends one when the lead becomes a customer): the
          assignment is released (the rep's capacity is free again; the SLA clock stops) and the action comes
          back with the former owner in `context.owner`.
        - Notifications built by the assignment subsystem (rule `assignment`) pass through untouched: they are
          already addressed, and re-assigning for them could loop. Without a roster nothing happens.

        Raises Redis errors and `AssignmentContention` (the dispatcher retries the whole action). Any other error
        is a bug or a bad roster/action: it is logged and the action is returned as it came, so one broken hot
        lead never blocks the partition.
        """
        try:
            return await self._prepare(action)
        except (RedisError, OSError, AssignmentContention):
            raise
        except Exception:
            logger.exception("hot-lead flow failed for action %s; delivering it unchanged", action.action_id)
            return action

    async def _prepare(self, action: Action) -> Action:
        if action.rule == NOTIFICATION_RULE or self.assigner is None:
            return action
        if action.payload.get("release_owner") is True:
            return await self._release(self.assigner, action)
        if not wants_owner(action):
            return action
        lead = dict(action.context)
        action, assignment = await with_owner(self.assigner, action)
        if assignment is None:
            logger.warning("no rep is eligible for hot lead %s now; alert goes out without an owner", action.lead_id)
            return action
        for note in assignment_actions(assignment, lead, action.fired_at_ms):
            if note.connector not in self.connectors:
                continue
            if note.connector == "slack" and (action.connector == "slack" or not assignment.created):
                continue  # the alert itself mentions the rep, or the action that made the assignment did
            await self.deliver(note)
        return action

    async def _release(self, assigner: Assigner, action: Action) -> Action:
        owner = await assigner.owner(action.lead_id)
        if owner is None:
            return action
        await assigner.release(action.lead_id)
        return dataclasses.replace(action, context={**action.context, "owner": owner.rep_card()})
