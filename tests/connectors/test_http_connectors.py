"""Webhook, Slack and CRM connectors against real aiohttp servers on loopback."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from connectors.base import Connector, ConnectorEnv, PermanentError, RetryableError
from connectors.crm import CrmConfig, CrmConnector
from connectors.rendering import Renderer
from connectors.slack import SlackConfig, SlackConnector
from connectors.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookConfig,
    WebhookConnector,
    verify_signature,
)
from engine.config import Settings
from engine.core.model import Action
from engine.devstack import free_port
from engine.testing import RecordingPeer
from tests.connectors.helpers import make_action

pytestmark = pytest.mark.integration

ENV = ConnectorEnv(Settings(), Renderer())
HOT_LEAD_CONTEXT = {
    "traits": {"email": "grace@acme.test", "name": "Grace Hopper", "company": "Acme", "title": "CTO"},
    "score": 87,
    "stage": "sql",
    "owner": {"id": "r1", "name": "Bo Rep", "email": "bo@seller.test", "slack_id": "U123ABC"},
    "last_page": {"path": "/pricing", "url": "https://seller.test/pricing"},
    "recent": ["Pricing Viewed", "Demo Requested"],
}


def webhook(url: str, **options: object) -> WebhookConnector:
    config = WebhookConfig.model_validate({"type": "webhook", "url": url, "timeout_s": 2, **options})
    return WebhookConnector("webhook", config, ENV)


async def send_once(connector: Connector, action: Action) -> None:
    """Send one action, then close the connector (and its HTTP session) whatever happened."""
    try:
        await connector.send(action)
    finally:
        await connector.close()


async def test_webhook_is_signed_and_carries_the_idempotency_key(http_peer: RecordingPeer) -> None:
    hook = webhook(f"{http_peer.url}/in", secret="whsec-abc123", headers={"X-Api-Key": "key-987654"})
    action = make_action("webhook")
    await send_once(hook, action)
    request = http_peer.requests[0]
    assert request.method == "POST" and request.path == "/in"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == action.action_id == request.headers["X-Nudge-Action-Id"]
    assert request.headers["X-Api-Key"] == "key-987654"
    assert (
        request.json()["action_id"] == action.action_id and request.json()["context"]["cart"]["value"] == 120
    )
    timestamp, signature = request.headers[TIMESTAMP_HEADER], request.headers[SIGNATURE_HEADER]
    assert verify_signature("whsec-abc123", timestamp, request.body, signature)
    assert not verify_signature("wrong-secret", timestamp, request.body, signature)
    assert not verify_signature("whsec-abc123", timestamp, request.body + b" ", signature)  # tampered body
    # Replayed later than the window: rejected even with a valid signature.
    assert not verify_signature("whsec-abc123", timestamp, request.body, signature, now_s=time.time() + 301)


@pytest.mark.parametrize(
    ("status", "headers", "error", "reason", "retry_after"),
    [
        (500, {}, RetryableError, "http_500", None),
        (503, {"Retry-After": "7"}, RetryableError, "http_503", 7.0),
        (429, {"Retry-After": "2"}, RetryableError, "http_429", 2.0),
        (400, {}, PermanentError, "http_400", None),
        (404, {}, PermanentError, "http_404", None),
    ],
)
async def test_http_status_mapping(
    status: int, headers: dict, error: type, reason: str, retry_after: float
) -> None:
    async with RecordingPeer(default=(status, headers, "nope")) as peer:
        with pytest.raises(error) as raised:
            await send_once(webhook(peer.url), make_action("webhook"))
    assert raised.value.reason == reason
    assert getattr(raised.value, "retry_after_s", None) == retry_after


async def test_unreachable_peer_is_retryable() -> None:
    with pytest.raises(RetryableError) as raised:
        await send_once(webhook(f"http://127.0.0.1:{free_port()}/x"), make_action("webhook"))
    assert raised.value.reason == "connection_error"


async def test_slack_hot_lead_block_kit(http_peer: RecordingPeer) -> None:
    token_path = "/services/T000/B000/slackTOKEN123"
    slack = SlackConnector(
        "slack", SlackConfig.model_validate({"type": "slack", "webhook_url": http_peer.url + token_path}), ENV
    )
    action = make_action(
        "slack",
        rule="hot_lead",
        template="hot_lead",
        marketing=False,
        explanation="score 87 ≥ 80: pricing page 3x & demo request <today>",
        context=HOT_LEAD_CONTEXT,
    )
    await send_once(slack, action)
    request = http_peer.requests[0]
    assert request.path == token_path
    message = request.json()
    blocks = message["blocks"]
    assert blocks[0]["text"]["text"].startswith(":fire: *Hot lead: Grace Hopper* (Acme)")
    assert "<@U123ABC>" in blocks[0]["text"]["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in blocks[1]["fields"]}
    assert fields["*Lead*"] == "Grace Hopper (grace@acme.test)"
    assert fields["*Company*"] == "Acme, CTO"
    assert fields["*Score*"] == "87" and fields["*Stage*"] == "sql"
    assert fields["*Rep*"] == "<@U123ABC>"
    texts = [b["text"]["text"] for b in blocks[2:] if b["type"] == "section"]
    # the page a browser reported is lead-provided: its URL is shown, not linked
    assert "Pricing Viewed, Demo Requested; last page https[:]//seller[.]test/pricing" in texts[0]
    assert "&amp; demo request &lt;today&gt;" in texts[1]  # lead/rule text is escaped for mrkdwn
    assert action.action_id in blocks[-1]["elements"][0]["text"]
    assert message["text"]


async def test_slack_neutralises_markup_links_and_mentions_from_the_lead(http_peer: RecordingPeer) -> None:
    slack = SlackConnector("slack", SlackConfig(type="slack", webhook_url=f"{http_peer.url}/s"), ENV)
    hostile = {
        "traits": {
            "email": "grace@acme.test",
            "name": "*URGENT* <!channel> pay at https://evil.example/pay",
            "company": "_Acme_ <https://evil.example|Acme login> ~x~ `code`",
            "title": "www.evil.example",
        },
        "owner": {"name": "Bo Rep", "slack_id": "U123ABC"},
        "last_page": {"url": "javascript:alert(1)"},
        "recent": ["<@U999> visit evil.example"],
    }
    explanation = "viewed <https://evil.example|pricing> 3x"
    action = make_action("slack", template="hot_lead", explanation=explanation, context=hostile)
    await send_once(slack, action)
    message = http_peer.requests[0].json()
    texts = [message["text"]]
    for block in message["blocks"]:
        objects = [block["text"]] if "text" in block else block.get("fields") or block.get("elements") or []
        for obj in objects:
            texts.append(obj["text"])
            if block["type"] == "section":
                assert obj.get("verbatim") is True  # Slack links nothing by itself
    everything = "\n".join(texts)
    for forbidden in ("<!channel>", "<https://", "https://", "evil.example", "javascript:", "<@U999>",
                      "*URGENT*", "_Acme_", "~x~", "`code`"):
        assert forbidden not in everything, forbidden
    assert "<@U123ABC>" in everything  # the rep's mention, written by Nudge, still works
    assert "URGENT" in everything and "evil[.]example" in everything  # the text is shown, defused


async def test_slack_lead_without_rep_or_score(http_peer: RecordingPeer) -> None:
    slack = SlackConnector("slack", SlackConfig(type="slack", webhook_url=f"{http_peer.url}/s"), ENV)
    await send_once(slack, make_action("slack", template="hot_lead", context={"traits": "garbage", "score": "n/a"}))
    fields = [f["text"] for f in http_peer.requests[0].json()["blocks"][1]["fields"]]
    assert "*Rep*\nunassigned" in fields
    assert not any(f.startswith("*Score*") for f in fields)


REP_LINKS = {
    "ack": "https://reps.example.com/links/ack?lead=ada&rep=r1&exp=1900000000&sig=abc-_1",
    "pass": "https://reps.example.com/links/pass?lead=ada&rep=r1&exp=1900000000&sig=def-_2",
    "inbox": "https://reps.example.com/inbox",
}


def slack_connector(url: str, **options: object) -> SlackConnector:
    return SlackConnector("slack", SlackConfig.model_validate({"webhook_url": url, **options}), ENV)


def mrkdwn(url: str) -> str:
    return url.replace("&", "&amp;")


async def hot_lead_with_links(http_peer: RecordingPeer, *, template: str = "hot_lead", **options: object) -> dict:
    action = make_action(
        "slack", rule="hot_lead", template=template, marketing=False, context=HOT_LEAD_CONTEXT,
        payload={"links": REP_LINKS, "mention": "<@U123ABC>"},
    )  # fmt: skip
    await send_once(slack_connector(f"{http_peer.url}/s", **options), action)
    return http_peer.requests[-1].json()


async def test_slack_hot_lead_shows_the_reps_links_as_a_mrkdwn_line_without_an_app(http_peer: RecordingPeer) -> None:
    message = await hot_lead_with_links(http_peer)
    headline = message["blocks"][0]["text"]["text"]
    line = (
        f"<{mrkdwn(REP_LINKS['ack'])}|Acknowledge> · <{mrkdwn(REP_LINKS['pass'])}|Pass it on> · "
        f"<{REP_LINKS['inbox']}|Inbox>"
    )
    assert line in headline and headline.count("|Acknowledge>") == 1
    assert headline.startswith(":fire: *Hot lead: Grace Hopper* (Acme)")
    assert not [b for b in message["blocks"] if b["type"] == "actions"]


async def test_slack_app_shows_the_reps_links_as_url_buttons(http_peer: RecordingPeer) -> None:
    message = await hot_lead_with_links(http_peer, app=True)
    (actions,) = [b for b in message["blocks"] if b["type"] == "actions"]
    assert actions["elements"] == [
        {"type": "button", "text": {"type": "plain_text", "text": "Acknowledge"}, "url": REP_LINKS["ack"],
         "action_id": "nudge_ack", "style": "primary"},
        {"type": "button", "text": {"type": "plain_text", "text": "Pass it on"}, "url": REP_LINKS["pass"],
         "action_id": "nudge_pass"},
        {"type": "button", "text": {"type": "plain_text", "text": "Inbox"}, "url": REP_LINKS["inbox"],
         "action_id": "nudge_inbox"},
    ]  # fmt: skip
    assert message["blocks"].index(actions) == len(message["blocks"]) - 2  # just above the context line
    everything = orjson.dumps([b for b in message["blocks"] if b["type"] != "actions"]).decode()
    assert "reps.example.com" not in everything and "Acknowledge" not in everything  # not twice


async def test_slack_rep_messages_carry_the_links_either_way(http_peer: RecordingPeer) -> None:
    for template in ("lead_assigned", "lead_sla_missed", "default"):
        plain = await hot_lead_with_links(http_peer, template=template)
        headline = plain["blocks"][0]["text"]["text"]
        assert headline.count(f"<{mrkdwn(REP_LINKS['ack'])}|Acknowledge>") == 1, template  # `default`: appended
        assert f"<{REP_LINKS['inbox']}|Inbox>" in headline, template
        app = await hot_lead_with_links(http_peer, template=template, app=True)
        assert "|Acknowledge>" not in app["blocks"][0]["text"]["text"], template
        assert [len(b["elements"]) for b in app["blocks"] if b["type"] == "actions"] == [3], template


async def test_slack_leaves_out_links_it_cannot_carry(http_peer: RecordingPeer) -> None:
    bad = {"ack": "javascript:alert(1)", "pass": "https://reps.example.com/x|<!channel>", "inbox": REP_LINKS["inbox"]}
    action = make_action("slack", template="lead_assigned", marketing=False, payload={"links": bad})
    await send_once(slack_connector(f"{http_peer.url}/s", app=True), action)
    (actions,) = [b for b in http_peer.requests[-1].json()["blocks"] if b["type"] == "actions"]
    assert [e["url"] for e in actions["elements"]] == [REP_LINKS["inbox"]]
    await send_once(slack_connector(f"{http_peer.url}/s"), make_action("slack", template="default", payload={}))
    assert not [b for b in http_peer.requests[-1].json()["blocks"] if b["type"] == "actions"]


def test_slack_app_option_in_the_connectors_file() -> None:
    from engine.dispatch.config import parse_connectors

    config = parse_connectors(
        "connectors:\n  alerts: {type: slack, webhook_url: 'https://hooks.slack.com/services/T/B/x', app: true}\n",
        env={"NUDGE_BROKER_PROFILE": "dev"},
    )
    assert config.connectors["alerts"].app is True  # type: ignore[attr-defined]


async def test_crm_upserts_the_contact_and_creates_a_task(http_peer: RecordingPeer) -> None:
    crm = CrmConnector(
        "crm",
        CrmConfig.model_validate({"type": "crm", "base_url": f"{http_peer.url}/api/", "token": "crm-token-555"}),
        ENV,
    )
    action = make_action("crm", rule="hot_lead", marketing=False, priority=10, context=HOT_LEAD_CONTEXT)
    await send_once(crm, action)
    upsert, task = http_peer.requests
    assert (upsert.method, upsert.path) == ("PUT", f"/api/contacts/{action.lead_id}")
    assert upsert.headers["Authorization"] == "Bearer crm-token-555"
    assert upsert.headers["Idempotency-Key"] == action.action_id
    contact = upsert.json()
    assert contact["email"] == "grace@acme.test" and contact["company"] == "Acme"
    assert contact["properties"]["lead_score"] == 87 and contact["properties"]["lifecycle_stage"] == "sql"
    assert contact["properties"]["owner"] == "bo@seller.test"
    assert (task.method, task.path) == ("POST", "/api/tasks")
    assert task.headers["Idempotency-Key"] == f"{action.action_id}:task"
    body = task.json()
    assert body["contact_external_id"] == action.lead_id and body["owner"] == "bo@seller.test"
    assert body["title"] == "Follow up with Grace Hopper" and body["priority"] == "high"


def verification_sample() -> str:
    """The Python code under the heading "Verifying a webhook" in the user docs (docs/*.md, or README.md)."""
    root = Path(__file__).resolve().parents[2]
    for page in [*sorted((root / "docs").glob("*.md")), root / "README.md"]:
        heading = re.search(r"^#+ Verifying a webhook$", page.read_text(), re.MULTILINE)
        if heading is not None:
            section = heading.string[heading.end() :]
            start = section.index("```python") + len("```python")
            return section[start : section.index("```", start)]
    raise AssertionError("no 'Verifying a webhook' section in docs/ or README.md")


async def test_the_documented_verification_sample_accepts_our_requests(http_peer: RecordingPeer) -> None:
    code = verification_sample()
    namespace: dict[str, object] = {}
    exec(code, namespace)
    verify = namespace["verify"]
    await send_once(webhook(http_peer.url, secret="whsec-readme-1"), make_action("webhook"))
    request = http_peer.requests[0]
    assert verify("whsec-readme-1", request.headers, request.body)  # type: ignore[operator]
    assert not verify("whsec-other", request.headers, request.body)  # type: ignore[operator]
