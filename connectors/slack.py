"""`slack`: post to a Slack incoming webhook with Block Kit."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import orjson
from pydantic import Field, SecretStr

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
    app: bool = Field(
        False,
        description="the webhook belongs to a Slack app (api.slack.com/apps → Incoming Webhooks): the reps' signed "
        "links become Block Kit URL buttons; false (a legacy webhook): a line of mrkdwn links",
    )


# The reps' signed links an action may carry in `payload.links` (engine.assignment: `RepLinks.for_assignment`),
# in the order they are shown, with their labels. Other keys are ignored.
REP_LINKS = (("ack", "Acknowledge"), ("pass", "Pass it on"), ("inbox", "Inbox"))
_SAFE_URL = re.compile(r"https?://[^\s<>|\"]{1,2900}")  # Slack takes up to 3000 characters in a button's url


def rep_links(payload: dict[str, Any]) -> list[tuple[str, str, str]]:
    """`(key, label, url)` of each rep link in `payload.links` that is an http(s) URL Slack can carry (no space,
    `<`, `>`, `|` or quote, at most 2900 characters), in `REP_LINKS` order; a link that is not is left out."""
    links = payload.get("links")
    if not isinstance(links, dict):
        return []
    return [
        (key, label, url)
        for key, label in REP_LINKS
        if isinstance(url := links.get(key), str) and _SAFE_URL.fullmatch(url)
    ]


def links_line(links: list[tuple[str, str, str]]) -> str:
    """The links as one mrkdwn line, `<url|Acknowledge> · <url|Pass it on> · <url|Inbox>` (`&` escaped)."""
    return " · ".join(f"<{url.replace('&', '&amp;')}|{label}>" for _key, label, url in links)


def link_buttons(links: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The links as a Block Kit `actions` block of URL buttons (acknowledge styled primary)."""
    buttons = []
    for key, label, url in links:
        button: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": label},
            "url": url,
            "action_id": f"nudge_{key}",
        }
        if key == "ack":
            button["style"] = "primary"
        buttons.append(button)
    return {"type": "actions", "block_id": "nudge_rep_links", "elements": buttons}


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack does not turn URLs, channel names or @-words into links or mentions by itself; links and
    # mentions appear only where Nudge wrote `<...>` markup (lead data has its `<` escaped).
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _field(label: str, value: Any) -> dict[str, Any]:
    """A field whose value the lead provided: cleaned (`slack_plain`)."""
    return _mrkdwn(f"*{label}*\n{slack_plain(value)}")


def build_message(
    action: Action, headline: str, *, buttons: list[tuple[str, str, str]] | None = None
) -> dict[str, Any]:
    """The Block Kit message. Every value the lead provided (name, company, title, pages, recent events, the
    explanation) goes through `slack_plain`: escaped, formatting characters replaced, URLs neutralised; the
    lead's email (a trusted trait) is escaped only. `buttons` (the rep's links, `rep_links`) become an `actions`
    block of URL buttons before the context line."""
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
    if buttons:
        blocks.append(link_buttons(buttons))
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
    - The rep's signed links (`payload.links`: ack, pass, inbox; `rep_links`): with `app: true`, URL buttons in an
      `actions` block, and the template renders without them (no link twice); otherwise the template shows them
      as a mrkdwn line (the built-in `hot_lead` and rep templates do), and the headline of a template that does
      not gets the line appended (`links_line`), so a rep's message never loses its links.
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
        links = rep_links(action.payload)
        shown = action
        if links and self.config.app:  # buttons instead: the template renders without the links
            shown = dataclasses.replace(action, payload={k: v for k, v in action.payload.items() if k != "links"})
        try:
            headline = self.env.renderer.slack(shown.template, template_vars(shown, clean=slack_clean))
        except TemplateProblem as exc:
            raise PermanentError(exc.reason, str(exc)) from None
        if links and not self.config.app and f"<{links[0][2].replace('&', '&amp;')}|" not in headline:
            headline = f"{headline.rstrip()}\n{links_line(links)}"  # the template did not show them
        buttons = links if self.config.app else None
        # Serialised here, so a value JSON cannot carry fails as a bad message, not in the transmit step.
        return SlackMessage(orjson.dumps(build_message(action, headline, buttons=buttons)), action.action_id)

    async def transmit(self, message: SlackMessage) -> None:
        await self.http.post_json(
            self.config.webhook_url.get_secret_value(), message.body, {"X-Nudge-Action-Id": message.action_id}
        )
