"""`slack`: post to a Slack incoming webhook with Block Kit."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from pydantic import SecretStr

from connectors.base import ConnectorConfig, PermanentError
from connectors.context import LeadView
from connectors.http import HttpConnector
from connectors.rendering import TemplateProblem, slack_clean, slack_escape, slack_plain, template_vars
from engine.core.model import Action
from engine.events import format_ts


class SlackConfig(ConnectorConfig):
    """Options of a `slack` connector; `webhook_url` is a secret."""

    type: str = "slack"
    webhook_url: SecretStr


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack does not turn URLs, channel names or @-words into links or mentions by itself; links and
    # mentions appear only where Nudge wrote `<...>` markup (lead data has its `<` escaped).
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _field(label: str, value: Any) -> dict[str, Any]:
    """A field whose value the lead provided: cleaned (`slack_plain`)."""
    return _mrkdwn(f"*{label}*\n{slack_plain(value)}")


def build_message(action: Action, headline: str) -> dict[str, Any]:
    """The Block Kit message. Every value the lead provided (name, company, title, pages, recent events, the
    explanation) goes through `slack_plain`: escaped, formatting characters replaced, URLs neutralised; the
    lead's email (a trusted trait) is escaped only."""
    view = LeadView(action)
    email = slack_escape(view.email) if view.email else ""
    name = view.name
    who = slack_plain(name) if name else (email or slack_plain(view.lead_id))
    if name and email:
        who = f"{who} ({email})"
    fields = [_mrkdwn(f"*Lead*\n{who}")]
    if view.company:
        fields.append(_field("Company", view.company + (f", {view.title}" if view.title else "")))
    if view.score is not None:
        fields.append(_field("Score", f"{view.score:g}"))
    if view.stage:
        fields.append(_field("Stage", view.stage))
    rep = view.rep
    if rep is not None:
        mention = f"<@{rep.slack_id}>" if rep.slack_id and rep.slack_id.isalnum() else slack_escape(
            rep.name or rep.email or ""
        )
        fields.append(_mrkdwn(f"*Rep*\n{mention}"))
    else:
        fields.append(_mrkdwn("*Rep*\nunassigned"))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": _mrkdwn(headline)},
        {"type": "section", "fields": fields[:10]},  # Slack allows at most 10 fields
    ]
    did = ", ".join(view.recent)
    if view.last_page:
        did = f"{did}; last page {view.last_page}" if did else f"last page {view.last_page}"
    if did:
        blocks.append({"type": "section", "text": _mrkdwn(f"*What they did*\n{slack_plain(did)}")})
    if action.explanation:
        why = slack_plain(action.explanation)
        blocks.append({"type": "section", "text": _mrkdwn(f"*Why this fired*\n{why}")})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"rule `{slack_escape(action.rule)}` v{slack_escape(action.rule_version)} · "
                    f"{format_ts(action.fired_at_ms)} · action `{action.action_id}`",
                }
            ],
        }
    )
    message: dict[str, Any] = {
        "text": f"{headline} — {slack_plain(action.explanation)}"[:3000],
        "blocks": blocks,
    }
    channel = action.payload.get("channel")
    if isinstance(channel, str) and channel:
        message["channel"] = channel  # honoured by legacy webhooks; app webhooks post to their own channel
    return message


class SlackMessage(NamedTuple):
    """The JSON body for the incoming webhook, and the action id for the header."""

    body: bytes
    action_id: str


class SlackConnector(HttpConnector[SlackMessage]):
    """Posts one Block Kit message per action to the incoming webhook.

    - Payload: `{"text": <fallback>, "blocks": [...]}` as Slack's incoming webhooks accept. The first section is the
      rendered `slack/<template>.md.j2` (escaped mrkdwn); then fields for who the lead is (name, email, company),
      score, stage and the assigned rep (`<@U123>` mention when the rep has a `slack_id`); what they did (recent
      activity, last page); why the rule fired (the action's explanation); and a context line with rule and action
      id.
    - Lead-provided text (names, company, traits, pages, recent events, the explanation) is defused everywhere:
      `&<>` escaped, mrkdwn formatting characters replaced by look-alikes, URLs neutralised
      (`rendering.slack_clean` / `slack_plain`); every text object is `verbatim`, so Slack links and mentions
      nothing by itself. An unknown template fails the action (`unknown_template`).
    - The webhook URL contains Slack's secret token: it is a secret (never logged; errors carry no URL).
    - Slack answers 200 `ok`; 429 with Retry-After is honoured; 4xx (`invalid_payload`, `channel_not_found`, ...)
      is permanent; 5xx retried. Slack has no idempotency header: the action id is in the context block and in
      `X-Nudge-Action-Id` for a proxy that dedupes.
    """

    kind = "slack"
    config_model = SlackConfig
    template_family = "slack"
    config: SlackConfig

    def build(self, action: Action) -> SlackMessage:
        try:
            headline = self.env.renderer.slack(action.template, template_vars(action, clean=slack_clean))
        except TemplateProblem as exc:
            raise PermanentError(exc.reason, str(exc)) from None
        # Serialised here, so a value JSON cannot carry fails as a bad message, not in the transmit step.
        return SlackMessage(orjson.dumps(build_message(action, headline)), action.action_id)

    async def transmit(self, message: SlackMessage) -> None:
        await self.http.post_json(
            self.config.webhook_url.get_secret_value(), message.body, {"X-Nudge-Action-Id": message.action_id}
        )
