"""Actions that tell reps about assignments. Pure: builds `Action` values, delivers nothing; the dispatcher delivers
them like any other action. All are sales alerts (`marketing=False`, `priority=10`) with an `action_id`
deterministic in (lead, template, recipient, assignment time), so a repeated SLA pass never doubles a message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.assignment.model import Assignment, SlaBreach
from engine.assignment.store import QueueItem
from engine.assignment.strategies import lead_traits
from engine.core.model import Action, make_action_id

RULE = "assignment"
RULE_VERSION = "1"
PRIORITY = 10


def mention(card: Mapping[str, Any]) -> str:
    slack_id = card.get("slack_id")
    return f"<@{slack_id}>" if slack_id else str(card.get("name") or card.get("id"))


def lead_label(lead_id: str, lead: Mapping[str, Any]) -> str:
    traits = lead_traits(lead)
    name = traits.get("name") or traits.get("email") or lead_id
    company = traits.get("company")
    if isinstance(company, Mapping):
        company = company.get("name")
    return f"{name} ({company})" if company else str(name)


def _action(
    lead_id: str,
    *,
    template: str,
    connector: str,
    recipient: str,
    key_time_ms: int,
    fired_at_ms: int,
    explanation: str,
    payload: dict[str, Any],
    context: dict[str, Any],
    rule: str = RULE,
) -> Action:
    return Action(
        action_id=make_action_id(
            rule, RULE_VERSION, lead_id, f"{template}:{connector}:{recipient}:{key_time_ms}"
        ),
        rule=rule,
        rule_version=RULE_VERSION,
        lead_id=lead_id,
        fired_at_ms=fired_at_ms,
        trigger=(),
        connector=connector,
        explanation=explanation,
        template=template,
        payload=payload,
        priority=PRIORITY,
        marketing=False,
        context=context,
    )


def _context(assignment: Assignment, lead: Mapping[str, Any]) -> dict[str, Any]:
    return {**dict(lead), "owner": assignment.rep_card(), "assignment": assignment.to_json()}


def _name(card: Mapping[str, Any]) -> str:
    return str(card.get("name") or card.get("id"))


def ack_path(lead_id: str) -> str:
    return f"/v1/leads/{lead_id}/ack"


def _add_links(payload: dict[str, Any], lead_id: str, links: Mapping[str, str] | None) -> None:
    """The rep's signed links when there are any (the templates show them); else the API path to acknowledge."""
    if links:
        payload["links"] = dict(links)
    else:
        payload["ack_path"] = ack_path(lead_id)


def assignment_actions(
    assignment: Assignment, lead: Mapping[str, Any], fired_at_ms: int
) -> tuple[Action, ...]:
    """Slack alert mentioning the new owner + email to the owner, for a fresh assignment of a hot lead.

    - connector "slack", template "lead_assigned": payload `{"mention": "<@SLACKID>", "rep": card, "text": plain
      text without Slack markup, "ack_path": "/v1/leads/{id}/ack"}`.
    - connector "email", template "lead_assigned": payload as above plus `{"to": rep email, "subject": ...}`.
    With signed links (`Assignment.links`) both carry `payload.links` = `{"ack", "pass", "inbox"}` URLs (the rep
    templates show them as links; the Slack connector may show them as buttons).
    A rep card is `{"id", "name", "email", "slack_id"}`. `context` is the lead as given to `Assigner.assign`
    (traits, score, stage) plus `owner` (card) and `assignment` (`Assignment.to_json()`). The built-in `default`
    templates render these: Slack shows `payload.mention` then `payload.text`; email goes to `payload.to` with
    `payload.subject`.
    """
    card = assignment.rep_card()
    label = lead_label(assignment.lead_id, lead)
    waited = f" after {_minutes(assignment.waited_ms)} in the queue" if assignment.waited_ms else ""
    text = f"hot lead {label} is yours{waited}: please acknowledge it"
    payload: dict[str, Any] = {"mention": mention(card), "rep": card, "text": text}
    _add_links(payload, assignment.lead_id, assignment.links)
    context = _context(assignment, lead)
    common = {
        "lead_id": assignment.lead_id,
        "key_time_ms": assignment.assigned_at_ms,
        "fired_at_ms": fired_at_ms,
    }
    why = f"lead assigned to {assignment.rep_id} by {assignment.strategy}"
    return (
        _action(
            template="lead_assigned", connector="slack", recipient=assignment.rep_id, explanation=why,
            payload=payload, context=context, **common,
        ),
        _action(
            template="lead_assigned", connector="email", recipient=assignment.rep_id, explanation=why,
            payload={**payload, "to": assignment.email, "subject": f"New hot lead: {label}"},
            context=context, **common,
        ),
    )  # fmt: skip


def _minutes(ms: int | None) -> str:
    minutes = round((ms or 0) / 60000)
    return "less than a minute" if minutes < 1 else f"{minutes} min"


def reassignment_actions(
    breach: SlaBreach | None,
    assignment: Assignment,
    previous: Mapping[str, Any],
    lead: Mapping[str, Any],
    fired_at_ms: int,
    reason: str = "sla",
) -> tuple[Action, ...]:
    """Slack message to both reps + email to the new owner + email to the previous owner. `breach` is the SLA
    breach that caused the move (None for a pass or a reassignment to a named rep: `reason` "passed" or "named").

    - connector "slack", template "lead_reassigned": payload `{"mention": "<@NEW> <@OLD>", "rep": new card,
      "previous_rep": old card, "reason": "sla", "text", "ack_path"}`: one message that tells both reps.
    - connector "email", template "lead_assigned" to the new owner (keys as in `assignment_actions`) and template
      "lead_reassigned_away" to the previous owner (`rep` = the previous owner, `new_rep` = new card).
    """
    card, old = assignment.rep_card(), dict(previous)
    label = lead_label(assignment.lead_id, lead)
    because = {
        "sla": "was not acknowledged in time",
        "passed": "was passed on",
        "named": "was reassigned by hand",
    }.get(reason, f"was moved ({reason})")
    context = {**_context(assignment, lead), "previous_owner": old, "reason": reason}
    payload: dict[str, Any] = {
        "mention": f"{mention(card)} {mention(old)}",
        "rep": card,
        "previous_rep": old,
        "reason": reason,
    }
    _add_links(payload, assignment.lead_id, assignment.links)
    key_time_ms = breach.deadline_ms if breach is not None else assignment.assigned_at_ms
    common = {"lead_id": assignment.lead_id, "key_time_ms": key_time_ms, "fired_at_ms": fired_at_ms}
    if breach is not None:
        why = f"no acknowledgement from {breach.rep_id} by the SLA deadline; reassigned to {assignment.rep_id}"
    else:
        why = f"{reason}: moved from {old.get('id')} to {assignment.rep_id}"
    to_new = f"hot lead {label} {because} by {_name(old)} and is now yours: please acknowledge it"
    to_old = f"hot lead {label} {because} and now belongs to {_name(card)}"
    to_both = f"hot lead {label} {because}: moved from {_name(old)} to {_name(card)}"
    return (
        _action(
            template="lead_reassigned", connector="slack", recipient=f"{old.get('id')}>{assignment.rep_id}",
            explanation=why, context=context, **common,
            payload={**payload, "text": to_both},
        ),
        _action(
            template="lead_assigned", connector="email", recipient=assignment.rep_id, explanation=why,
            payload={**payload, "to": assignment.email, "subject": f"Hot lead reassigned to you: {label}",
                     "text": to_new},
            context=context, **common,
        ),
        _action(
            template="lead_reassigned_away", connector="email", recipient=str(old.get("id")), explanation=why,
            payload={**{k: v for k, v in payload.items() if k not in ("links", "ack_path")}, "to": old.get("email"),
                     "rep": old, "new_rep": card, "inbox_url": (assignment.links or {}).get("inbox"),
                     "subject": f"Hot lead {label} was reassigned", "text": to_old},
            context=context, **common,
        ),
    )  # fmt: skip


def sla_missed_actions(
    breach: SlaBreach,
    owner: Mapping[str, Any],
    lead: Mapping[str, Any],
    fired_at_ms: int,
    why: str,
    links: Mapping[str, str] | None = None,
) -> tuple[Action, ...]:
    """Reminder to the current owner when the lead cannot move (nobody else eligible, or too many moves):
    connector "slack", template "lead_sla_missed" (with the owner's signed `links` when given).
    """
    card = dict(owner)
    text = f"hot lead {lead_label(breach.lead_id, lead)} is still waiting for you to acknowledge it ({why})"
    payload: dict[str, Any] = {"mention": mention(card), "rep": card, "reason": why, "text": text}
    _add_links(payload, breach.lead_id, links)
    return (
        _action(
            breach.lead_id, template="lead_sla_missed", connector="slack", recipient=breach.rep_id,
            key_time_ms=breach.deadline_ms, fired_at_ms=fired_at_ms,
            explanation=f"SLA missed by {breach.rep_id}: {why}",
            payload=payload,
            context={**dict(lead), "owner": card},
        ),
    )  # fmt: skip


def queue_alert_actions(item: QueueItem, fired_at_ms: int, channel: str | None = None) -> tuple[Action, ...]:
    """One Slack message to the team channel about a hot lead that has waited longer than
    `sla.queue_alert_after` for a rep: connector "slack", template "lead_queue_waiting", payload `{"text",
    "position", "waited_s", "channel"?}`; the action id is deterministic in (lead, time it joined the queue), so
    the alert goes out once per wait."""
    waited_ms = max(0, fired_at_ms - item.queued_at_ms)
    label = lead_label(item.lead_id, item.lead)
    text = (
        f"hot lead {label} has waited {_minutes(waited_ms)} for a rep (number {item.position} in the queue): "
        "every eligible rep is at capacity or away"
    )
    payload: dict[str, Any] = {"text": text, "position": item.position, "waited_s": waited_ms // 1000}
    if channel:
        payload["channel"] = channel
    return (
        _action(
            item.lead_id, template="lead_queue_waiting", connector="slack", recipient="team",
            key_time_ms=item.queued_at_ms, fired_at_ms=fired_at_ms,
            explanation=f"waiting for a rep since {item.queued_at_ms} (queue alert)",
            payload=payload, context={**item.lead, "queue": {"position": item.position, "waited_ms": waited_ms}},
        ),
    )  # fmt: skip
