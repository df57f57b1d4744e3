"""Links in messages to leads: only to the shop itself. An item link a visitor sent (`Product Added` with `url:
javascript:...` or `https://evil.example`) never reaches an email; links are built from the shop's `site_url` and
the product id, or taken as sent only when they are https on the shop's own origin."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")  # whitespace, control characters, backslashes: never in a link we write


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or {"https": 443, "http": 80}.get(scheme)


def same_origin_https(url: object, site_url: str) -> str | None:
    """`url` when it is an absolute `https://` URL on the origin of `site_url` (same host and port, no user
    info, no whitespace or control characters), normalised; else None. A `site_url` that is not https accepts
    no URL at all."""
    if not isinstance(url, str) or not url or len(url) > 2048 or _UNSAFE.search(url):
        return None
    site = _origin(site_url)
    given = _origin(url)
    if site is None or given is None or site[0] != "https" or given != site:
        return None
    parts = urlsplit(url)
    return urlunsplit(("https", parts.netloc.lower(), parts.path or "/", parts.query, parts.fragment))


def product_link(template: str, site_url: str, product_id: str | None) -> str | None:
    """The shop's own page for `product_id`: `template` with `{site_url}` and `{product_id}` (percent-encoded,
    so an id cannot add a path, a query or a host). None without a product id."""
    if not product_id:
        return None
    return template.format(site_url=site_url.rstrip("/"), product_id=quote(product_id, safe=""))


def http_url(url: object) -> str | None:
    """`url` when it is an absolute http(s) URL without whitespace or control characters (links the shop wrote
    itself, in a rule's payload); else None. Never `javascript:`, `data:` or a relative path."""
    if not isinstance(url, str) or _UNSAFE.search(url):
        return None
    origin = _origin(url)
    return url if origin is not None and origin[0] in ("http", "https") else None
