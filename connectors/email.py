"""`email`: an HTML + text email over SMTP (STARTTLS or implicit TLS, AUTH), rendered from sandboxed templates,
sent through aiosmtplib (asyncio-native: STARTTLS, implicit TLS and AUTH without a thread per send)."""

from __future__ import annotations

import email.errors
import hashlib
import hmac
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiosmtplib
from pydantic import ConfigDict, Field, SecretStr

from connectors.base import (
    BadMessage,
    Connector,
    ConnectorConfig,
    ConnectorEnv,
    PermanentError,
    RetryableError,
    SkipDelivery,
)
from connectors.context import LeadView
from connectors.rendering import TemplateProblem, template_vars
from engine.core.model import Action


class EmailConfig(ConnectorConfig):
    """Options of an `email` connector; `password` and `unsubscribe_secret` are secrets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = "email"
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = Field("Nudge <nudge@localhost>", alias="from")
    reply_to: str | None = None
    brand_name: str = "Our shop"
    site_url: str = "https://shop.example"
    return_url: str = Field(
        "{site_url}/cart?lead={lead_id}", description="format fields: site_url, lead_id, rule"
    )
    unsubscribe_url: str = "{site_url}/unsubscribe?lead={lead_id}&sig={signature}"
    unsubscribe_mailto: str | None = None
    unsubscribe_secret: SecretStr | None = None
    validate_certs: bool = True
    ca_file: Path | None = Field(None, description="CA bundle for a server with a private certificate")


class EmailConnector(Connector[EmailMessage]):
    """Renders and sends one message per action over a fresh SMTP connection (simple, and loopback/relay
    latency makes it cheap).

    - Recipient: the lead's `traits.email`; a lead without one is `SkipDelivery("no_email_address")` (suppressed).
    - Body: `multipart/alternative` with a text part and an HTML part from `email/<template>.{subject,txt,html}.j2`
      (fallback `default`); abandonment templates list the cart (product names, quantities, prices, total) and a
      return link. Variables: `rendering.template_vars` plus `brand`, and `links` {site_url, return_url,
      unsubscribe_url}.
    - Headers: `Message-ID: <action_id@sender-domain>` (a second copy after a crash carries the same id, so mail
      systems and people can tell), `X-Nudge-Action-Id`, `List-Unsubscribe` (URL and optional mailto) and, for
      https URLs, `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    - The unsubscribe URL is signed (`{signature}` = HMAC-SHA256(unsubscribe_secret, lead id), hex, first 32
      chars) so a link cannot be forged for another lead.
    - A value the mail format refuses (CR/LF in the lead's name, which would inject headers) fails the build:
      `BadMessage` (`bad_message`) for that action only, never counted by the circuit breaker. The message is
      serialised once in `build`, so no such error can surface later, in the SMTP transaction.
    - SMTP 4xx and connection problems are retryable; 5xx (unknown mailbox, rejected content, failed AUTH)
      permanent. The password never appears in errors.
    """

    kind = "email"
    config_model = EmailConfig
    consent_by_default = True
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

    def links(self, action: Action) -> dict[str, str]:
        view = LeadView(action)
        secret = self.config.unsubscribe_secret.get_secret_value() if self.config.unsubscribe_secret else ""
        signature = hmac.new(secret.encode(), view.lead_id.encode(), hashlib.sha256).hexdigest()[:32]
        fields = {
            "site_url": self.config.site_url.rstrip("/"),
            "lead_id": quote(view.lead_id, safe=""),
            "rule": quote(action.rule, safe=""),
            "action_id": action.action_id,
            "signature": signature,
        }
        cart_url = view.cart.get("url") if isinstance(view.cart.get("url"), str) else None
        payload_url = (
            action.payload.get("return_url") if isinstance(action.payload.get("return_url"), str) else None
        )
        return {
            "site_url": fields["site_url"],
            "return_url": payload_url or cart_url or self.config.return_url.format(**fields),
            "unsubscribe_url": self.config.unsubscribe_url.format(**fields),
        }

    @staticmethod
    def recipient(action: Action, view: LeadView) -> tuple[str, str]:
        """(display name, address): `payload.to` (e.g. an alert to the lead's rep), else the lead's email."""
        to = action.payload.get("to")
        if isinstance(to, str) and "@" in to:
            rep = action.payload.get("rep")
            name = rep.get("name") if isinstance(rep, dict) else None
            return (str(name or ""), to.strip())
        if view.email is None:
            raise SkipDelivery("no_email_address", "the lead has no traits.email")
        return (view.name or "", view.email)

    def build(self, action: Action) -> EmailMessage:
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
        links = self.links(action)
        variables: dict[str, Any] = template_vars(
            action, {"links": links, "brand": {"name": self.config.brand_name}}
        )
        try:
            subject, text, html = self.env.renderer.email(action.template, variables)
        except TemplateProblem as exc:
            raise PermanentError("template_error", str(exc)) from None
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
                msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg["X-Nudge-Action-Id"] = action.action_id
        msg["X-Nudge-Rule"] = action.rule
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

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
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RetryableError("connection_error", f"{type(exc).__name__}: {exc}") from None
