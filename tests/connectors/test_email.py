"""The email connector against a real SMTP server (aiosmtpd): TLS, AUTH, the message parsed back."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError

from connectors.base import BadMessage, ConnectorEnv, PermanentError, RetryableError, SkipDelivery
from connectors.email import EmailConfig, EmailConnector
from connectors.rendering import Renderer
from engine import unsubscribe_links
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
UNSUBSCRIBE_SECRET = "unsub-key-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["starttls", "ssl"])
def smtp(request: pytest.FixtureRequest, cert: tuple[Path, Path]) -> Iterator[tuple[SmtpPeer, str]]:
    peer = SmtpPeer("nudge", PASSWORD).start(*cert, mode=request.param)
    yield peer, request.param
    peer.stop()


def connector(
    port: int, security: str, cert: Path, password: str = PASSWORD, renderer: Renderer | None = None, **options: Any
) -> EmailConnector:
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
            "unsubscribe_base_url": "https://collector.shop.example",
            "unsubscribe_secret": UNSUBSCRIBE_SECRET,
            "unsubscribe_mailto": "unsubscribe@example.com",
            "ca_file": str(cert),
            "timeout_s": 5,
            **options,
        }
    )
    return EmailConnector("email", config, ConnectorEnv(Settings(), renderer or Renderer()))


def bodies(msg: EmailMessage) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


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
    assert msg["Subject"] == "You left something in your cart"  # fixed text: no lead-provided name in subjects
    assert msg["Message-ID"] == f"<{action.action_id}@example.com>"
    assert msg["X-Nudge-Action-Id"] == action.action_id
    assert msg.get_content_type() == "multipart/alternative"
    text, html = bodies(msg)
    for body in (text, html):
        assert "Walnut Desk" in body and "$100.00" in body
        assert "Brass Lamp" in body and "$10.00" in body
        assert "$120.00" in body
        assert "https://shop.example/cart?lead=lead-42" in body
        assert "https://collector.shop.example/v1/unsubscribe?l=lead-42&" in body.replace("&amp;", "&")
    assert '<a href="https://shop.example/products/p1">Walnut Desk</a>' in html  # built from the product id
    assert "<script>" not in html and "&lt;script&gt;" in html  # lead data cannot inject markup
    unsubscribe = msg["List-Unsubscribe"]
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe>" in unsubscribe
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The link is the collector's: l=<lead>&e=<expiry>&s=<HMAC(secret, "lead.expiry")>, and it verifies.
    url = unsubscribe.split(">")[0].lstrip("<")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "collector.shop.example", "/v1/unsubscribe")
    query = dict(parse_qsl(parts.query))
    assert query["l"] == "lead-42" and int(query["e"]) > 1_700_000_000
    assert query["s"] == unsubscribe_links.signature(UNSUBSCRIBE_SECRET, "lead-42", int(query["e"]))
    assert unsubscribe_links.verify_query([UNSUBSCRIBE_SECRET], query) == (unsubscribe_links.LinkCheck.VALID, "lead-42")
    forged = {**query, "l": "lead-43"}
    assert unsubscribe_links.verify_query([UNSUBSCRIBE_SECRET], forged)[0] is unsubscribe_links.LinkCheck.FORGED


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
        connector(free_port(), "ssl", cert[0]).build(make_action("email", context={"traits": traits}))
    assert bad.value.reason == "bad_message" and "victim" not in bad.value.detail


# --- the phishing relay (issue 15): who gets mail, which links and which subject it carries
ATTACK_ITEMS = [
    {"product_id": "p1", "name": "Desk", "price": 10, "quantity": 1, "url": "javascript:alert(document.cookie)"},
    {"product_id": "p2", "name": "Lamp", "price": 5, "quantity": 1, "url": "https://evil.example/login"},
    {"product_id": "p3", "name": "Rug", "price": 7, "quantity": 1, "url": "https://shop.example@evil.example/x"},
    {"product_id": "p/../4?x=1", "name": "Vase", "price": 3, "quantity": 1, "url": "http://shop.example/p4"},
    {"name": "Chair", "price": 3, "quantity": 1, "url": "//evil.example/c", "image_url": "https://evil.example/t.gif"},
    {"product_id": "p6", "name": "Mug", "price": 4, "quantity": 1, "url": "https://shop.example/mugs/6?c=red",
     "image_url": "https://shop.example/img/6.png"},
    {"product_id": "p7", "name": "Click https://evil.example/win now", "price": 1, "quantity": 1},
]  # fmt: skip


def test_item_links_only_lead_to_the_shop(cert: tuple[Path, Path]) -> None:
    traits = {"email": "ada@example.com", "name": "Ada"}
    action = make_action("email", context={"traits": traits, "cart": {"items": ATTACK_ITEMS, "url": "javascript:x"}})
    msg = connector(free_port(), "ssl", cert[0]).build(action)
    text, html = bodies(msg)
    for body in (text, html):
        assert "javascript" not in body.lower() and "evil.example" not in body
    hrefs = [h.split('"')[0] for h in html.split('href="')[1:]]
    assert "https://shop.example/products/p1" in hrefs  # a javascript: link replaced by the product page
    assert "https://shop.example/products/p2" in hrefs  # an off-site link too
    assert "https://shop.example/products/p3" in hrefs  # user info in front of another host too
    assert "https://shop.example/products/p%2F..%2F4%3Fx%3D1" in hrefs  # an id cannot add a path or a query
    assert "https://shop.example/mugs/6?c=red" in hrefs  # same-origin https is kept
    assert all(h.startswith("https://shop.example/") or h.startswith("https://collector.shop.example/") for h in hrefs)
    assert "https://shop.example/img/6.png" in html or "img" not in html  # images: same origin only
    assert "evil[.]example" in text  # a product name cannot carry a clickable URL either
    assert "https://shop.example/cart?lead=" in text  # the cart's javascript: url fell back to return_url


def test_marketing_mail_goes_only_to_the_trusted_address(cert: tuple[Path, Path]) -> None:
    email = connector(free_port(), "ssl", cert[0])
    # A browser's identify only ever lands under traits.unverified (the collector's trust model): never read.
    visitor = {"unverified": {"email": "attacker@evil.example"}, "name": "Ada"}
    with pytest.raises(SkipDelivery):
        email.build(make_action("email", context={"traits": visitor}))
    both = {"email": "ada@example.com", "unverified": {"email": "attacker@evil.example"}}
    assert email.build(make_action("email", context={"traits": both}))["To"].addresses[0].addr_spec == (
        "ada@example.com"
    )
    # A marketing action cannot redirect itself with payload.to (only alerts to reps may).
    redirected = make_action("email", payload={"to": "attacker@evil.example"})
    assert "attacker" not in str(email.build(redirected)["To"])
    assert email.recipient_address(redirected) == redirected.context["traits"]["email"]
    # context.email (not a trait) is no address either
    assert email.recipient_address(make_action("email", context={"email": "x@evil.example", "traits": {}})) is None


def test_subjects_never_carry_text_a_visitor_typed(cert: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    for part, text in (("subject", "Hi {{ lead.first_name }} {{ traits.name }} {{ cart.items }} {{ brand.name }}"),
                       ("txt", "Hi {{ lead.first_name }}"), ("html", "<p>Hi {{ lead.first_name }}</p>")):
        (tmp_path / "email" / f"greedy.{part}.j2").write_text(text)  # a user template that tries anyway
    traits = {"email": "ada@example.com", "name": "WIN $$$ at evil.example", "first_name": "Claim"}
    evil_cart = {"items": [{"name": "Prize at evil.example", "price": 1, "quantity": 1}]}
    email = connector(free_port(), "ssl", cert[0], renderer=Renderer(tmp_path))
    for template in ("cart_reminder", "browse_reminder", "checkout_reminder", "welcome", "default", "greedy"):
        msg = email.build(make_action("email", template=template, context={"traits": traits, "cart": evil_cart}))
        subject = str(msg["Subject"])
        assert "evil" not in subject and "WIN" not in subject and "Claim" not in subject and "Prize" not in subject
    assert str(email.build(make_action("email", template="greedy"))["Subject"]) == "Hi Nudge Shop"
    # The rule's own payload.subject (written by the shop) is used as it is.
    ruled = make_action("email", payload={"subject": "Your cart misses you"}, context={"traits": traits})
    assert email.build(ruled)["Subject"] == "Your cart misses you"


def test_a_misspelt_template_fails_instead_of_sending_the_default(cert: tuple[Path, Path]) -> None:
    with pytest.raises(PermanentError) as failed:
        connector(free_port(), "ssl", cert[0]).build(make_action("email", template="cart_remindr"))
    assert failed.value.reason == "unknown_template" and "cart_remindr" in failed.value.detail


# --- transport: STARTTLS by default, no AUTH in clear
def test_auth_over_a_clear_connection_is_refused_unless_allowed() -> None:
    base = {"type": "email", "security": "none", "username": "nudge", "password": PASSWORD}
    with pytest.raises(ValidationError, match="allow_plaintext_auth"):
        EmailConfig.model_validate(base)
    assert EmailConfig.model_validate({**base, "allow_plaintext_auth": True}).allow_plaintext_auth
    assert EmailConfig.model_validate({"type": "email"}).security == "starttls"  # the default
    assert EmailConfig.model_validate({"type": "email", "security": "none"}).username is None  # no AUTH: fine


async def test_starttls_is_required_never_downgraded(cert: tuple[Path, Path]) -> None:
    plain = SmtpPeer().start_plain()  # a server (or a man in the middle) that offers no STARTTLS
    try:
        with pytest.raises(RetryableError) as refused:
            await connector(plain.port, "starttls", cert[0]).send(make_action("email"))
        assert refused.value.reason == "smtp_no_starttls"
        assert plain.messages == [] and plain.auth_attempts == 0  # nothing, and no password, went out in clear
    finally:
        plain.stop()
