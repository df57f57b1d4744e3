"""Signed one-click unsubscribe links: written by the `email` connector, verified by the collector's
`/v1/unsubscribe` endpoint. A leaf module (standard library only), so both sides import it without importing
each other.

    {base_url}/v1/unsubscribe?l=<lead id>&e=<expiry, epoch seconds>&s=<hex HMAC-SHA256(secret, f"{lead}.{expiry}")>

The signature binds the lead id and the expiry: a link cannot be re-aimed at another lead or made to live longer.
The expiry is an integer, so `f"{lead}.{expiry}"` is unambiguous whatever the lead id holds (it is split at the
last dot). Verification is in constant time and accepts several secrets, so a secret can be rotated while links
signed with the old one are still in inboxes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from enum import Enum
from urllib.parse import quote

PATH = "/v1/unsubscribe"
LEAD_PARAM, EXPIRY_PARAM, SIGNATURE_PARAM = "l", "e", "s"
MIN_SECRET_BYTES = 32
DEFAULT_TTL_S = 365 * 86400  # a link in an old email keeps working for a year (laws ask for at least 30 days)
# The body of an RFC 8058 one-click POST, and the header that announces it.
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"
_MAX_LEAD_LENGTH = 512


class LinkCheck(Enum):
    """What `verify` found; only `VALID` may unsubscribe anyone."""

    VALID = "valid"
    MISSING = "missing"  # a parameter is absent or empty
    MALFORMED = "malformed"  # an expiry that is not an integer, a signature that is not 64 hex digits, ...
    EXPIRED = "expired"
    FORGED = "forged"  # well formed, but no configured secret signed it
    NO_SECRET = "no_secret"  # nothing to verify with: every link is refused


def signature(secret: str | bytes, lead_id: str, expires_s: int) -> str:
    """The lowercase hex HMAC-SHA256 of `f"{lead_id}.{expires_s}"` (UTF-8) under `secret`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{lead_id}.{int(expires_s)}".encode(), hashlib.sha256).hexdigest()


def expiry_for(now_s: float, ttl_s: float = DEFAULT_TTL_S) -> int:
    """The expiry (epoch seconds) of a link written at `now_s`, rounded up to the hour, so every message of one
    lead within an hour carries the same link."""
    return int((int(now_s + ttl_s) // 3600 + 1) * 3600)


def link(base_url: str, secret: str | bytes, lead_id: str, expires_s: int) -> str:
    """The unsubscribe URL for `lead_id` under `base_url` (scheme + host, with or without a trailing slash)."""
    return (
        f"{base_url.rstrip('/')}{PATH}?{LEAD_PARAM}={quote(lead_id, safe='')}"
        f"&{EXPIRY_PARAM}={int(expires_s)}&{SIGNATURE_PARAM}={signature(secret, lead_id, expires_s)}"
    )


def verify(
    secrets: Iterable[str | bytes],
    lead_id: str | None,
    expires: str | int | None,
    given_signature: str | None,
    now_s: float | None = None,
) -> LinkCheck:
    """Check one link's parameters (already URL-decoded) against every secret, in constant time per secret.
    Never raises, whatever the input."""
    keys = [s for s in secrets if s]
    if not keys:
        return LinkCheck.NO_SECRET
    if not lead_id or expires in (None, "") or not given_signature:
        return LinkCheck.MISSING
    if len(lead_id) > _MAX_LEAD_LENGTH or not isinstance(given_signature, str) or len(given_signature) != 64:
        return LinkCheck.MALFORMED
    try:
        expiry = int(expires)
    except (TypeError, ValueError):
        return LinkCheck.MALFORMED
    if str(expiry) != str(expires).strip() or expiry <= 0:
        return LinkCheck.MALFORMED
    candidate = given_signature.lower().encode("ascii", "replace")
    matches = [hmac.compare_digest(candidate, signature(key, lead_id, expiry).encode()) for key in keys]
    if not any(matches):
        return LinkCheck.FORGED
    if expiry < (time.time() if now_s is None else now_s):
        return LinkCheck.EXPIRED
    return LinkCheck.VALID


def verify_query(
    secrets: Iterable[str | bytes], query: Mapping[str, str], now_s: float | None = None
) -> tuple[LinkCheck, str | None]:
    """`verify` on a parsed query string (`l`, `e`, `s`); returns the verdict and the lead id it names (None when
    absent). Use the lead id only when the verdict is `VALID`."""
    lead = query.get(LEAD_PARAM)
    return verify(secrets, lead, query.get(EXPIRY_PARAM), query.get(SIGNATURE_PARAM), now_s), lead
