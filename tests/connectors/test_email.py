"""The email connector against a real SMTP server (aiosmtpd): TLS, AUTH, the message parsed back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.base import BadMessage, ConnectorEnv, PermanentError, RetryableError, SkipDelivery
from connectors.email import EmailConfig, EmailConnector
from connectors.rendering import Renderer
from engine.config import Settings
from engine.devstack import free_port
from tests.connectors.helpers import make_action
from tests.connectors.smtp_peer import SmtpPeer, self_signed_cert

pytestmark = [
    pytest.mark.integration,
    # implicit TLS: aiosmtpd only counts STARTTLS as TLS and warns; the session is encrypted all the same
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

PASSWORD = "smtp-Pa55word-do-not-log"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["starttls", "ssl"])
def smtp(request: pytest.FixtureRequest, cert: tuple[Path, Path]) -> Iterator[tuple[SmtpPeer, str]]:
    peer = SmtpPeer("nudge", PASSWORD).start(*cert, mode=request.param)
    yield peer, request.param
    peer.stop()


def connector(port: int, security: str, cert: Path, password: str = PASSWORD) -> EmailConnector:
    config = EmailConfig.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "security": security,
            "username": "nudge",
            "password": password,
            "from": "Nudge Shop <shop@example.com>",
            "brand_name": "Nudge Shop",
            "site_url": "https://shop.example",
            "unsubscribe_secret": "unsub-key-123",
            "unsubscribe_mailto": "unsubscribe@example.com",
            "ca_file": str(cert),
            "timeout_s": 5,
        }
    )
    return EmailConnector("email", config, ConnectorEnv(Settings(), Renderer()))


async def test_cart_reminder_arrives_with_cart_links_and_unsubscribe(
    smtp: tuple[SmtpPeer, str], cert: tuple[Path, Path]
) -> None:
    peer, security = smtp
    action = make_action("email", lead_id="lead-42")
    action.context["cart"]["items"].append({"name": "<script>alert(1)</script>", "price": 5, "quantity": 1})
    await connector(peer.port, security, cert[0]).send(action)

    assert len(peer.messages) == 1 and peer.auth_attempts == 1
    msg = peer.messages[0]
    assert peer.envelopes[0].rcpt_tos == ["lead-42@example.com"]
    assert msg["To"].addresses[0].addr_spec == "lead-42@example.com"
    assert msg["Subject"] == "You left something in your cart, Ada"
    assert msg["Message-ID"] == f"<{action.action_id}@example.com>"
    assert msg["X-Nudge-Action-Id"] == action.action_id
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for body in (text, html):
        assert "Walnut Desk" in body and "$100.00" in body
        assert "Brass Lamp" in body and "$10.00" in body
        assert "$120.00" in body
        assert "https://shop.example/cart?lead=lead-42" in body
        assert "https://shop.example/unsubscribe?lead=lead-42&" in body.replace("&amp;", "&")
    assert "<script>" not in html and "&lt;script&gt;" in html  # lead data cannot inject markup
    unsubscribe = msg["List-Unsubscribe"]
    assert "<https://shop.example/unsubscribe?lead=lead-42&sig=" in unsubscribe
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe>" in unsubscribe
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_alert_to_a_rep_goes_to_payload_to_without_list_headers(
    smtp: tuple[SmtpPeer, str], cert: tuple[Path, Path]
) -> None:
    peer, security = smtp
    action = make_action(
        "email",
        marketing=False,
        template="lead_assigned",
        payload={
            "to": "rep@example.com",
            "subject": "New lead: Ada",
            "text": "Ada is yours",
            "rep": {"name": "Bo"},
        },
    )
    await connector(peer.port, security, cert[0]).send(action)
    msg = peer.messages[0]
    assert peer.envelopes[0].rcpt_tos == ["rep@example.com"]
    assert msg["Subject"] == "New lead: Ada"
    assert "Ada is yours" in msg.get_body(("plain",)).get_content()
    assert msg["List-Unsubscribe"] is None


async def test_failures_are_classified_and_never_show_the_password(
    smtp: tuple[SmtpPeer, str], cert: tuple[Path, Path]
) -> None:
    peer, security = smtp
    with pytest.raises(PermanentError) as bad_auth:
        await connector(peer.port, security, cert[0], password="wrong-Pa55word-xyz").send(
            make_action("email")
        )
    assert bad_auth.value.reason == "smtp_auth_failed"
    assert "wrong-Pa55word-xyz" not in str(bad_auth.value)
    with pytest.raises(SkipDelivery) as no_address:
        await connector(peer.port, security, cert[0]).send(make_action("email", context={"traits": {}}))
    assert no_address.value.reason == "no_email_address"
    with pytest.raises(RetryableError) as down:
        await connector(free_port(), security, cert[0]).send(make_action("email"))
    assert PASSWORD not in str(down.value)
    assert peer.messages == []


@pytest.mark.parametrize(
    "traits",
    [
        {"email": "eve@example.com", "name": "Eve\r\nBcc: victim@example.com"},  # the stdlib refuses the header
        {"email": "eve@example.com\nBcc: victim@example.com", "name": "Eve"},
    ],
)
def test_a_header_the_mail_format_refuses_is_a_bad_message_found_before_any_io(
    traits: dict[str, str], cert: tuple[Path, Path]
) -> None:
    # build() alone: a bad message is found without an SMTP server, so it can never count as the peer's failure.
    with pytest.raises(BadMessage) as bad:
        connector(free_port(), "none", cert[0]).build(make_action("email", context={"traits": traits}))
    assert bad.value.reason == "bad_message" and "victim" not in bad.value.detail
