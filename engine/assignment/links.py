"""Signed links for reps: acknowledge or pass one lead in one click (Slack alert, email), sign in to the inbox.

A link is `<public url><path>?lead=..&rep=..&exp=..&sig=..`; `sig` is HMAC-SHA256, keyed by NUDGE_REPS_LINK_SECRET,
over (purpose, lead id, rep id, expiry), so a link works only for its purpose, its rep and its lead, until it
expires. Nothing is stored: a link cannot be revoked before its expiry except by changing the secret (which voids
every link and every inbox session at once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson

from engine.config import ConfigError, Settings

log = logging.getLogger(__name__)

PURPOSES = ("ack", "pass", "signin")
PATHS = {"ack": "/links/ack", "pass": "/links/pass", "signin": "/inbox/signin"}
INBOX_PATH = "/inbox"
MIN_SECRET_BYTES = 32
DEV_PROFILES = ("dev", "dev-batched")
# Used only under the dev broker profile when NUDGE_REPS_LINK_SECRET is unset, so `make demo` and tests need no
# secret; any other profile refuses to start without a real one (`RepLinks.from_settings`).
DEV_SECRET = "nudge-dev-profile-link-secret-never-use-in-production"


class LinkError(Exception):
    """A link that must not be honoured. `reason`: "malformed", "forged" (bad signature, wrong purpose, rep or
    lead) or "expired". The message is safe to log; pages show none of it (a 403 says only "not valid")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignedLink:
    """A verified link: `lead_id` is "" for a sign-in link; `expires_s` in epoch seconds."""

    purpose: str
    rep_id: str
    lead_id: str
    expires_s: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RepLinks:
    """Builds and verifies signed links. Pure (no I/O); `clock` gives epoch seconds.

    - `url(purpose, rep_id, lead_id, ttl_s)` → an absolute URL under `public_url` (where reps reach `nudge reps
      serve`, e.g. behind a TLS proxy); `ttl_s` defaults to `ttl_s` of the instance.
    - `verify(params, purpose)` → `SignedLink`, or raises `LinkError`. The signature is compared in constant time;
      the expiry is checked after the signature, so an expired forged link is still "forged".
    - `for_assignment(lead_id, rep_id)` → `{"ack", "pass", "inbox"}` URLs for a notification (the inbox URL is the
      plain page: it needs a session, never a capability).
    """

    def __init__(
        self, secret: bytes, public_url: str, ttl_s: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        if len(secret) < 1:
            raise ValueError("a link secret is required")
        self._key = hmac.new(secret, b"nudge reps links v1", hashlib.sha256).digest()
        # Names the key without revealing it: inbox sessions record it, so a new secret ends every session too.
        self.key_id = hmac.new(secret, b"nudge reps key id", hashlib.sha256).hexdigest()[:16]
        self.public_url = public_url.rstrip("/")
        self.ttl_s = ttl_s
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> RepLinks:
        """From NUDGE_REPS_LINK_SECRET, NUDGE_REPS_PUBLIC_URL and NUDGE_REPS_LINK_TTL_S. Outside the dev broker
        profile a secret shorter than 32 bytes (or none) raises `ConfigError`; under it, a missing secret means the
        fixed `DEV_SECRET` (with a warning)."""
        secret = settings.reps_link_secret.encode()
        if len(secret) < MIN_SECRET_BYTES:
            if settings.broker_profile not in DEV_PROFILES:
                raise ConfigError(
                    f"NUDGE_REPS_LINK_SECRET must be at least {MIN_SECRET_BYTES} bytes (it signs the reps' "
                    "acknowledge/pass links and inbox sign-ins); generate one with `openssl rand -hex 32`"
                )
            if not secret:
                log.warning("NUDGE_REPS_LINK_SECRET is unset: reps' links use the dev-profile secret")
                secret = DEV_SECRET.encode()
        if settings.reps_link_ttl_s <= 0:
            raise ConfigError("NUDGE_REPS_LINK_TTL_S must be a positive number of seconds, e.g. 604800 (7 days)")
        return cls(secret, settings.reps_public_url, settings.reps_link_ttl_s, clock=clock)

    def _signature(self, purpose: str, rep_id: str, lead_id: str, expires_s: int) -> bytes:
        message = orjson.dumps(["nudge-rep-link", purpose, lead_id, rep_id, expires_s])
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def params(self, purpose: str, rep_id: str, lead_id: str = "", ttl_s: float | None = None) -> dict[str, str]:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown link purpose {purpose!r}; one of {', '.join(PURPOSES)}")
        expires_s = int(self.clock() + (self.ttl_s if ttl_s is None else ttl_s))
        params = {"lead": lead_id} if lead_id else {}
        sig = _b64(self._signature(purpose, rep_id, lead_id, expires_s))
        return {**params, "rep": rep_id, "exp": str(expires_s), "sig": sig}

    def url(self, purpose: str, rep_id: str, lead_id: str = "", ttl_s: float | None = None) -> str:
        return f"{self.public_url}{PATHS[purpose]}?{urlencode(self.params(purpose, rep_id, lead_id, ttl_s))}"

    def signin_url(self, rep_id: str, ttl_s: float | None = None) -> str:
        return self.url("signin", rep_id, "", ttl_s)

    def for_assignment(self, lead_id: str, rep_id: str) -> dict[str, str]:
        return {
            "ack": self.url("ack", rep_id, lead_id),
            "pass": self.url("pass", rep_id, lead_id),
            "inbox": f"{self.public_url}{INBOX_PATH}",
        }

    def verify(self, params: Mapping[str, str], purpose: str) -> SignedLink:
        rep_id, lead_id = params.get("rep") or "", params.get("lead") or ""
        expires, sig = params.get("exp") or "", params.get("sig") or ""
        if not rep_id or not sig or not expires.isdigit() or len(expires) > 12 or (purpose != "signin") != bool(
            lead_id
        ):
            raise LinkError("malformed")
        try:
            given = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        except ValueError:
            raise LinkError("malformed") from None
        expected = self._signature(purpose, rep_id, lead_id, int(expires))
        if not hmac.compare_digest(given, expected):
            raise LinkError("forged")
        if int(expires) <= self.clock():
            raise LinkError("expired")
        return SignedLink(purpose, rep_id, lead_id, int(expires))
