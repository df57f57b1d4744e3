"""`email`: an HTML + text email over SMTP (STARTTLS or implicit TLS, AUTH), rendered from sandboxed templates,
sent through aiosmtplib (asyncio-native: STARTTLS, implicit TLS and AUTH without a thread per send)."""

from __future__ import annotations

import email.errors
import ssl
import time
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

import aiosmtplib
from pydantic import ConfigDict, Field, SecretStr, model_validator

from connectors.base import (
    BadMessage,
    Connector,
    ConnectorConfig,
    ConnectorEnv,
    PermanentError,
    RetryableError,
    SkipDelivery,
    is_dev_profile,
)
from connectors.context import CartItem, LeadView
from connectors.links import http_url, product_link, same_origin_https
from connectors.rendering import TemplateProblem, neutralise_urls, subject_vars, template_vars
from engine import unsubscribe_links
from engine.core.model import Action

if TYPE_CHECKING:
    from engine.config import Settings


class EmailConfig(ConnectorConfig):
    """Options of an `email` connector; `password` and `unsubscribe_secret` are secrets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = "email"
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"
    allow_plaintext_auth: bool = Field(
        False, description="allow AUTH with `security: none` (the password then crosses the network in clear)"
    )
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = Field("Nudge <nudge@localhost>", alias="from")
    reply_to: str | None = None
    brand_name: str = "Our shop"
    site_url: str = "https://shop.example"
    return_url: str = Field(
        "{site_url}/cart?lead={lead_id}", description="format fields: site_url, lead_id, rule, action_id"
    )
    product_url: str = Field(
        "{site_url}/products/{product_id}", description="an item's link; format fields: site_url, product_id"
    )
    unsubscribe_base_url: str | None = Field(
        None, description="where the collector's /v1/unsubscribe is reached (default NUDGE_COLLECTOR_PUBLIC_URL)"
    )
    unsubscribe_ttl_days: float = Field(365.0, gt=0, description="how long an unsubscribe link works")
    unsubscribe_mailto: str | None = None
    unsubscribe_secret: SecretStr | None = None
    unsubscribe_url: str | None = Field(None, description="replaced by unsubscribe_base_url; refused")
    marketing: bool = Field(True, description="false: rep alerts only; marketing actions through it fail")
    validate_certs: bool = True
    ca_file: Path | None = Field(None, description="CA bundle for a server with a private certificate")

    @model_validator(mode="after")
    def _safe_transport(self) -> EmailConfig:
        if self.unsubscribe_url is not None:
            raise ValueError(
                "unsubscribe_url was replaced by unsubscribe_base_url: the collector serves the signed links at "
                "{unsubscribe_base_url}/v1/unsubscribe (docs/connectors.md, Unsubscribe links)"
            )
        if self.username and self.security == "none" and not self.allow_plaintext_auth:
            raise ValueError(
                "AUTH over a connection without TLS sends the password in clear: use security: starttls (the "
                "default) or ssl, or set allow_plaintext_auth: true for a relay on a trusted network"
            )
        return self


class EmailConnector(Connector[EmailMessage]):
    """Renders and sends one message per action over a fresh SMTP connection (simple, and loopback/relay
    latency makes it cheap).

    - Recipient (`recipient_address`): a marketing action goes to the lead's `traits.email` only, the address the
      shop's back end stated (never an address under `traits.unverified`, which a browser may have typed, nor
      `payload.to`); an alert (`marketing: false`) may go to `payload.to` (the rep the assignment chose). No
      address → `SkipDelivery("no_email_address")` (suppressed). A marketing action through a connector with
      `marketing: false` fails (`marketing_not_allowed`).
    - Body: `multipart/alternative` with a text part and an HTML part from `email/<template>.{subject,txt,html}.j2`
      (no name: `default`; an unknown name fails the action as `unknown_template`). Variables:
      `rendering.template_vars` (lead-provided text with its URLs neutralised) plus `brand` and `links`
      {site_url, return_url, unsubscribe_url}.
    - Subject of mail to the lead: rendered from `rendering.subject_vars` only (the rule's payload, the brand,
      the cart's item count): no trait, name or product name a visitor could have typed reaches a subject line.
    - Links: an item's `url` only when https on the origin of `site_url`, else `product_url` with its product id
      (or none); `image_url` only when https and same-origin. The cart's own `url` likewise; a rule's
      `payload.return_url` when it is an http(s) URL.
    - Headers: `Message-ID: <action_id@sender-domain>` (a second copy after a crash carries the same id),
      `X-Nudge-Action-Id`, and for marketing mail `List-Unsubscribe` (the signed link of
      `engine.unsubscribe_links`, and the optional mailto) with `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
      (RFC 8058) when the link is https.
    - Transport: STARTTLS by default (`security: starttls` refuses a server that does not offer it), implicit TLS
      with `ssl`; AUTH without TLS is refused at load time unless `allow_plaintext_auth: true`.
    - A value the mail format refuses (CR/LF in the lead's name, which would inject headers) fails the build:
      `BadMessage` (`bad_message`) for that action only, never counted by the circuit breaker. The message is
      serialised once in `build`, so no such error can surface later, in the SMTP transaction.
    - SMTP 4xx and connection problems are retryable; 5xx (unknown mailbox, rejected content, failed AUTH)
      permanent. The password never appears in errors.
    """

    kind = "email"
    config_model = EmailConfig
    consent_by_default = True
    template_family = "email"
    signing_secrets: ClassVar[tuple[str, ...]] = ("unsubscribe_secret",)
    recipient_capped_by_default = True
    config: EmailConfig

    def __init__(self, name: str, config: EmailConfig, env: ConnectorEnv) -> None:
        super().__init__(name, config, env)
        self._tls: ssl.SSLContext | None = None
        if config.security != "none":
            self._tls = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            if not config.validate_certs:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self.sender_domain = parseaddr(config.from_address)[1].rpartition("@")[2] or "localhost"
        self.site_url = config.site_url.rstrip("/")
        self.unsubscribe_base = unsubscribe_base_url(config, env.settings)

    @classmethod
    def startup_problems(cls, name: str, config: ConnectorConfig, settings: Settings) -> list[str]:
        """Outside the dev profile, a connector that may send marketing mail needs `unsubscribe_secret` (every
        message carries a signed unsubscribe link the collector verifies) and an https `unsubscribe_base_url`
        (RFC 8058 one-click needs https)."""
        assert isinstance(config, EmailConfig)
        if not config.marketing or is_dev_profile(settings.broker_profile):
            return []
        problems = []
        if config.unsubscribe_secret is None:
            problems.append(
                f"connectors.{name}.unsubscribe_secret is empty: marketing email is refused outside the dev "
                "profile (set NUDGE_UNSUBSCRIBE_SECRET, 32+ bytes, the same value the collector verifies with; "
                "or `marketing: false` for a connector that only mails reps)"
            )
        base = unsubscribe_base_url(config, settings)
        if not base.startswith("https://"):
            problems.append(
                f"connectors.{name}.unsubscribe_base_url must be an https URL outside the dev profile (the "
                "collector's public address, or NUDGE_COLLECTOR_PUBLIC_URL); got "
                f"{base!r}" if base else f"connectors.{name}.unsubscribe_base_url is not set (nor "
                "NUDGE_COLLECTOR_PUBLIC_URL): marketing email needs the collector's public https address"
            )
        return problems

    # --- building
    def links(self, action: Action, now_s: float | None = None) -> dict[str, str]:
        view = LeadView(action)
        fields = {
            "site_url": self.site_url,
            "lead_id": quote(view.lead_id, safe=""),
            "rule": quote(action.rule, safe=""),
            "action_id": action.action_id,
        }
        cart_url = same_origin_https(view.cart.get("url"), self.site_url)
        payload_url = http_url(action.payload.get("return_url"))
        secret = self.config.unsubscribe_secret.get_secret_value() if self.config.unsubscribe_secret else ""
        expiry = unsubscribe_links.expiry_for(
            time.time() if now_s is None else now_s, self.config.unsubscribe_ttl_days * 86400
        )
        return {
            "site_url": self.site_url,
            "return_url": payload_url or cart_url or self.config.return_url.format(**fields),
            "unsubscribe_url": unsubscribe_links.link(self.unsubscribe_base, secret, view.lead_id, expiry),
        }

    def safe_items(self, view: LeadView) -> list[CartItem]:
        """The cart's items with links only to the shop: a same-origin https `url`, else the product page built
        from `product_url` and the product id, else none; `image_url` same-origin https or none."""
        out = []
        for item in view.cart_items:
            url = same_origin_https(item.url, self.site_url) or product_link(
                self.config.product_url, self.site_url, item.product_id
            )
            image = same_origin_https(item.image_url, self.site_url)
            out.append(CartItem(item.product_id, item.name, item.price, item.quantity, url, image))
        return out

    def recipient_address(self, action: Action) -> str | None:
        """The address this action would go to (for the per-recipient caps), or None when it has none."""
        try:
            return self.recipient(action, LeadView(action))[1]
        except SkipDelivery:
            return None

    @staticmethod
    def recipient(action: Action, view: LeadView) -> tuple[str, str]:
        """(display name, address): `traits.email` for marketing; `payload.to` (e.g. an alert to the lead's rep),
        else the lead's email, for an alert. Raises `SkipDelivery` when there is none."""
        to = action.payload.get("to")
        if not action.marketing and isinstance(to, str) and "@" in to:
            rep = action.payload.get("rep")
            name = rep.get("name") if isinstance(rep, dict) else None
            return (str(name or ""), to.strip())
        if view.email is None:
            raise SkipDelivery("no_email_address", "the lead has no traits.email")
        return (neutralise_urls(view.name or ""), view.email)  # the name is the lead's text: nothing clickable

    def build(self, action: Action) -> EmailMessage:
        if action.marketing and not self.config.marketing:
            raise PermanentError(
                "marketing_not_allowed", f"connector {self.name} has marketing: false (it only mails reps)"
            )
        try:
            msg = self.message(action)
            msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))  # every header must serialise, now
        except (ValueError, TypeError, UnicodeError, email.errors.MessageError) as exc:
            # The stdlib refuses CR/LF in headers and addresses (header injection): the data is wrong, not the peer.
            raise BadMessage(f"the message cannot be built: {type(exc).__name__}: {exc}"[:300]) from None
        return msg

    def message(self, action: Action) -> EmailMessage:
        """The message as built, without the serialisation check (`build` is the contract)."""
        view = LeadView(action)
        recipient = self.recipient(action, view)
        to_lead = recipient[1] == view.email  # not an address the rule or the assignment named (`payload.to`)
        links = self.links(action)
        brand = {"name": self.config.brand_name}
        variables: dict[str, Any] = template_vars(
            action, {"links": links, "brand": brand}, clean=neutralise_urls, items=self.safe_items(view)
        )
        subject_variables = subject_vars(action, {"brand": brand}) if to_lead else None
        try:
            subject, text, html = self.env.renderer.email(action.template, variables, subject_variables)
        except TemplateProblem as exc:
            raise PermanentError(exc.reason, str(exc)) from None
        msg = EmailMessage()
        msg["From"] = self.config.from_address
        local, _, domain = recipient[1].partition("@")
        msg["To"] = Address(display_name=recipient[0], username=local, domain=domain)
        msg["Subject"] = subject
        msg["Date"] = formatdate(action.fired_at_ms / 1000, usegmt=True)
        msg["Message-ID"] = f"<{action.action_id}@{self.sender_domain}>"
        if self.config.reply_to:
            msg["Reply-To"] = self.config.reply_to
        if action.marketing:  # alerts to reps are not a mailing list
            unsubscribe = [f"<{links['unsubscribe_url']}>"]
            if self.config.unsubscribe_mailto:
                unsubscribe.append(f"<mailto:{self.config.unsubscribe_mailto}?subject=unsubscribe>")
            msg["List-Unsubscribe"] = ", ".join(unsubscribe)
            if links["unsubscribe_url"].startswith("https://"):
                msg["List-Unsubscribe-Post"] = unsubscribe_links.ONE_CLICK_BODY
        msg["X-Nudge-Action-Id"] = action.action_id
        msg["X-Nudge-Rule"] = action.rule
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    # --- sending
    async def transmit(self, message: EmailMessage) -> None:
        msg = message
        config = self.config
        try:
            await aiosmtplib.send(
                msg,
                hostname=config.host,
                port=config.port,
                username=config.username or None,
                password=config.password.get_secret_value() if config.password and config.username else None,
                use_tls=config.security == "ssl",
                start_tls=config.security == "starttls",
                tls_context=self._tls,
                timeout=config.timeout_s,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise PermanentError("smtp_auth_failed", f"SMTP {exc.code}: authentication rejected") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            error = PermanentError if all(c >= 500 for c in codes) else RetryableError
            raise error("smtp_recipient_refused", f"SMTP {codes}: recipient refused") from None
        except aiosmtplib.SMTPResponseException as exc:
            error = RetryableError if 400 <= exc.code < 500 else PermanentError
            raise error(f"smtp_{exc.code // 100}xx", f"SMTP {exc.code}: {exc.message[:200]}") from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            raise RetryableError("timeout", f"no SMTP answer within {config.timeout_s:g} s") from None
        except aiosmtplib.SMTPException as exc:
            if config.security == "starttls" and "STARTTLS" in str(exc):
                # The server does not offer STARTTLS (or a man in the middle stripped it): never fall back to
                # clear text. Retryable: the peer or the path to it is at fault, not this message.
                raise RetryableError("smtp_no_starttls", "the server did not offer STARTTLS") from None
            raise RetryableError("connection_error", f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise RetryableError("connection_error", f"{type(exc).__name__}: {exc}") from None


def unsubscribe_base_url(config: EmailConfig, settings: Settings) -> str:
    """Where unsubscribe links point: `unsubscribe_base_url`, else `NUDGE_COLLECTOR_PUBLIC_URL`, else (dev
    profile only) the local collector; "" when unknown."""
    if config.unsubscribe_base_url:
        return config.unsubscribe_base_url.rstrip("/")
    public = str(getattr(settings, "collector_public_url", "") or "")
    if public:
        return public.rstrip("/")
    if is_dev_profile(settings.broker_profile):
        return f"http://127.0.0.1:{settings.collector_port}"
    return ""
