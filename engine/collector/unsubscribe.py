"""The signed unsubscribe links of marketing email (written by the `email` connector with
`engine.unsubscribe_links`), served by the collector at `/v1/unsubscribe`: a `GET` shows a confirmation page and
changes nothing (mail scanners and link previews fetch every link); a `POST` (RFC 8058 one-click, or the page's
button) records the unsubscribe as a trusted `Unsubscribed` track event on `clickstream` and in the lead's profile.
"""

from __future__ import annotations

import hashlib
import html
import logging
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web
from redis.exceptions import RedisError

from engine import metrics, unsubscribe_links
from engine.collector.decoding import read_body_within
from engine.collector.errors import RequestRejected
from engine.collector.producer import ClickstreamRecord
from engine.config import ConfigError, Settings
from engine.events import TRUST_MARKER, Event, format_ts

if TYPE_CHECKING:
    from engine.collector.app import Collector

log = logging.getLogger(__name__)

# The track event the worker turns into `traits.unsubscribed` and a `consent` record on `lead-updates`
# (engine.core.evaluate.UNSUBSCRIBED_EVENT; the collector may not import the core, a test keeps them equal).
UNSUBSCRIBED_EVENT = "Unsubscribed"
# What `context.nudge.auth` says of an event this endpoint wrote: a valid signed link proved who it is for.
AUTH_MARK = "unsubscribe_link"
SOURCE = "unsubscribe_link"
MAX_FORM_BYTES = 4096  # an RFC 8058 body is `List-Unsubscribe=One-Click`; a multipart one a few hundred bytes
DEDUPE_BUCKET_MS = 60_000  # clicks on one link within the same minute are one unsubscribe
RETRY_AFTER_S = 30
DEV_PROFILES = ("dev", "dev-batched")

_REFUSALS = {
    unsubscribe_links.LinkCheck.MISSING: "missing",
    unsubscribe_links.LinkCheck.MALFORMED: "malformed",
    unsubscribe_links.LinkCheck.EXPIRED: "expired",
    unsubscribe_links.LinkCheck.FORGED: "forged",
    unsubscribe_links.LinkCheck.NO_SECRET: "no_secret",
}

_STYLE = (
    "body{font-family:system-ui,-apple-system,sans-serif;margin:0;padding:2rem 1rem;background:#f6f6f4;color:#222}"
    "main{max-width:32rem;margin:0 auto;background:#fff;padding:1.5rem 2rem;border-radius:8px}"
    "h1{font-size:1.4rem;margin-top:0}button{font-size:1rem;padding:.7rem 1.4rem;border:0;border-radius:6px;"
    "background:#222;color:#fff;cursor:pointer}"
)
# The page loads nothing, runs no script, and its form may post only back to the collector.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",  # the URL carries the signature
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}


def unsubscribe_secrets(settings: Settings) -> tuple[str, ...]:
    """The keys links are verified with: `NUDGE_UNSUBSCRIBE_SECRET` (the email connector's `unsubscribe_secret`:
    the key that signs now) and `NUDGE_UNSUBSCRIBE_PREVIOUS_SECRETS` (the keys it replaced, kept while mails
    signed with them are in inboxes). Raises `ConfigError` for a key shorter than 32 bytes outside the dev broker
    profile; logs a warning when there is none (every link is then refused)."""
    secrets = tuple(s for s in (settings.unsubscribe_secret, *settings.unsubscribe_previous_secrets) if s)
    if not secrets:
        log.warning("NUDGE_UNSUBSCRIBE_SECRET is unset: /v1/unsubscribe refuses every link (403)")
    short = [s for s in secrets if len(s.encode()) < unsubscribe_links.MIN_SECRET_BYTES]
    if short and settings.broker_profile not in DEV_PROFILES:
        raise ConfigError(
            f"NUDGE_UNSUBSCRIBE_SECRET and NUDGE_UNSUBSCRIBE_PREVIOUS_SECRETS: every key must be at least "
            f"{unsubscribe_links.MIN_SECRET_BYTES} bytes (the email connector's unsubscribe_secret; generate one "
            "with `openssl rand -hex 32`)"
        )
    return secrets


def page(
    title: str, text: str, *, status: int = 200, button: str | None = None, retry_after_s: int | None = None
) -> web.Response:
    """A small self-contained HTML page. It shows nothing of the lead (no id, no address): the link in the
    address bar is all that identifies them. With `button`, a form that POSTs `List-Unsubscribe=One-Click` to the
    page's own URL (no `action`: the same path and query, so the page never repeats the lead id)."""
    form = (
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        f'<button type="submit">{html.escape(button)}</button></form>'
        if button
        else ""
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}</main></body></html>"
    )
    headers = dict(_HEADERS)
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=headers)


def refused_page() -> web.Response:
    # One page for every refusal: the visitor learns nothing about why (forged and expired look the same).
    return page(
        "This unsubscribe link does not work",
        "It may be incomplete or too old. Copy the whole link from the email, use the unsubscribe link of a more "
        "recent email, or reply to the email and ask to be unsubscribed.",
        status=403,
    )


def message_id(lead_id: str, expiry: str, now_ms: int) -> str:
    """The `Unsubscribed` event's messageId: the same for every POST of one link within one minute (a double
    click, a mailbox provider's retry: deduplicated like any SDK retry), a new one later (so an unsubscribe after
    a re-subscription is recorded again)."""
    seed = f"{lead_id}\n{expiry}\n{now_ms // DEDUPE_BUCKET_MS}".encode()
    return "unsub-" + hashlib.sha256(seed).hexdigest()[:32]


class Unsubscribe:
    """`GET` / `POST /v1/unsubscribe?l=<lead>&e=<expiry>&s=<signature>` on the collector (`add_routes`).

    Both methods: one token from the client address's rate-limit bucket (429 beyond, as every browser request),
    then the link checked with `engine.unsubscribe_links.verify_query` against every configured secret (constant
    time). Anything but `VALID` (missing, malformed, expired, forged, or no secret configured) → 403 page, and
    nothing is written anywhere.

    - `GET` (and `HEAD`): the confirmation page with one button. Changes nothing.
    - `POST` (body read within the collector's body timeout, at most `MAX_FORM_BYTES`, content not required:
      RFC 8058 sends `List-Unsubscribe=One-Click` form-encoded or multipart, the page's button the same):
      `record(lead)`, then 200 "unsubscribed" page. Idempotent: a repeat within the minute is the same event.
      503 page + Retry-After when Redis or the broker cannot take it (nothing half-done: see `record`).
    """

    def __init__(self, settings: Settings, collector: Collector) -> None:
        self.settings = settings
        self.collector = collector
        self.secrets = unsubscribe_secrets(settings)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        resource = router.add_resource(unsubscribe_links.PATH, name="unsubscribe")
        resource.add_route("GET", self.confirmation)
        resource.add_route("HEAD", self.confirmation)
        resource.add_route("POST", self.unsubscribe)

    def _verify(self, request: web.Request) -> str | None:
        """The lead id of a valid link, else None (counted by why)."""
        verdict, lead = unsubscribe_links.verify_query(self.secrets, request.query)
        if verdict is unsubscribe_links.LinkCheck.VALID and lead:
            return lead
        metrics.UNSUBSCRIBE_REQUESTS.labels(_REFUSALS.get(verdict, "malformed")).inc()
        return None

    def _admit(self, request: web.Request) -> None:
        self.collector.admit(None, self.collector.client_address(request), 0, 1)

    async def confirmation(self, request: web.Request) -> web.Response:
        self._admit(request)
        if self._verify(request) is None:
            return refused_page()
        metrics.UNSUBSCRIBE_REQUESTS.labels("shown").inc()
        return page(
            "Unsubscribe from our marketing email?",
            "Press the button and we will send no more marketing email to this address.",
            button="Unsubscribe",
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        self._admit(request)
        await read_body_within(request, MAX_FORM_BYTES, self.settings.collector_body_timeout_s)
        lead = self._verify(request)
        if lead is None:
            return refused_page()
        try:
            await self.record(lead, request.query.get(unsubscribe_links.EXPIRY_PARAM, ""))
        except RequestRejected:
            metrics.UNSUBSCRIBE_REQUESTS.labels("unavailable").inc()
            return page(
                "Please try again in a minute",
                "We could not record your request just now. Nothing was changed; the same link will work again "
                "shortly.",
                status=503,
                retry_after_s=RETRY_AFTER_S,
            )
        metrics.UNSUBSCRIBE_REQUESTS.labels("unsubscribed").inc()
        return page(
            "You are unsubscribed",
            "We will send no more marketing email to this address, including messages that were already waiting "
            "to be sent.",
        )

    async def record(self, lead_id: str, expiry: str, now_ms: int | None = None) -> Event:
        """Record one unsubscribe of `lead_id` (from a valid link) and return the event written.

        In order, like a tracking request of one event: the lead id re-keyed through recorded merges (an
        anonymous id merged into a user since the mail was sent unsubscribes that user); the messageId claimed
        (`message_id`: a repeat within the minute is a duplicate and writes nothing again); the `Unsubscribed`
        track event (`context.nudge` = trusted, auth `unsubscribe_link`; `properties.source` =
        `unsubscribe_link`) produced to `clickstream` and acknowledged by the broker; then the claim confirmed
        and `unsubscribed: true` + `unsubscribed_at` written to the profile (`nudge:profile:{lead}`).
        Raises `RequestRejected(503)` when Redis fails before the produce, another request holds the claim, or
        the broker does not acknowledge (the claim is released: a retry records it). Redis failing after the
        acknowledgement is logged only: the event is durable, and the worker applies it to the lead's traits
        whatever the profile says.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        event = Event(
            message_id=message_id(lead_id, expiry, now_ms),
            lead_id=lead_id,
            type="track",
            timestamp_ms=now_ms,
            name=UNSUBSCRIBED_EVENT,
            user_id=lead_id,
            properties={"source": SOURCE},
            context={TRUST_MARKER: {"trusted": True, "auth": AUTH_MARK}},
            received_at_ms=now_ms,
        )
        collector = self.collector
        token = uuid.uuid4().hex
        try:
            [event] = await collector.identity.rekey([event])
            claim = await collector.deduper.claim([event.message_id], token)
        except RedisError as exc:
            log.warning("unsubscribe not recorded, Redis unavailable: %s", exc)
            raise RequestRejected(503, "redis_unavailable", "retry later", retry_after_s=RETRY_AFTER_S) from exc
        if claim.in_flight:
            raise RequestRejected(503, "in_flight", "retry shortly", retry_after_s=1)
        if claim.duplicate:
            metrics.COLLECTOR_EVENTS.labels("track", "duplicate").inc()
            return event
        acked, _failed = await collector.producer.send([ClickstreamRecord.of(event)])
        if not acked:
            try:
                await collector.deduper.release([event.message_id], token)
            except RedisError as exc:  # the pending claim expires by itself
                log.warning("could not release an unsubscribe's dedupe claim: %s", exc)
            raise RequestRejected(503, "broker_unavailable", "retry later", retry_after_s=RETRY_AFTER_S)
        metrics.COLLECTOR_EVENTS.labels("track", "accepted").inc()
        profile = Event(
            message_id=event.message_id,
            lead_id=event.lead_id,
            type="identify",
            timestamp_ms=now_ms,
            user_id=event.lead_id,
            traits={"unsubscribed": True, "unsubscribed_at": format_ts(now_ms)},
            context=event.context,
        )
        try:
            await collector.deduper.confirm([event.message_id])
            await collector.identity.record([profile])
        except RedisError as exc:
            log.error("unsubscribe recorded on clickstream, but not in the profile (Redis): %s", exc)
        return event
