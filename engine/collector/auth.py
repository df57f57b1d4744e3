"""Write-key authentication, as the Segment and RudderStack SDKs send it, and which kind of key it was."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable
from typing import Any

from engine.collector.errors import RequestRejected
from engine.collector.trust import Auth
from engine.config import ConfigError

NO_KEY_MESSAGE = (
    "missing or unknown write key: send it as HTTP Basic auth user "
    "(`Authorization: Basic base64(<writeKey>:)`) or as `writeKey` in the JSON body"
)


class WriteKeys:
    """The configured write keys, of two kinds: browser (client) keys (`NUDGE_WRITE_KEYS`), public by nature (they
    are in every page), and server keys (`NUDGE_SERVER_WRITE_KEYS`), kept secret by the shop's back end. A request
    is authenticated when its `Authorization: Basic base64(<writeKey>:)` header (the write key as user, empty
    password) names a configured key or, when it has no Authorization header, when its JSON body carries a
    configured `writeKey` (Segment's HTTP API accepts both); `check_header` / `check_body` return the key's kind
    (`Auth.SERVER` or `Auth.CLIENT`) and raise `RequestRejected(401, "unauthorized")` otherwise. Keys are compared
    in constant time. No key at all, or one key in both lists, raises `ConfigError`: the collector never runs open
    and never guesses how far to trust a key.
    """

    def __init__(self, client_keys: Iterable[str], server_keys: Iterable[str] = ()) -> None:
        self._client = tuple(k.encode() for k in client_keys if k)
        self._server = tuple(k.encode() for k in server_keys if k)
        if not self._client and not self._server:
            raise ConfigError(
                "no write keys configured: set NUDGE_WRITE_KEYS to a comma-separated list of the browser SDKs' "
                "keys (and NUDGE_SERVER_WRITE_KEYS to the server SDKs' secret keys)"
            )
        if set(self._client) & set(self._server):
            raise ConfigError("a key is in both NUDGE_WRITE_KEYS and NUDGE_SERVER_WRITE_KEYS: give each one kind")

    def kind(self, candidate: str) -> Auth | None:
        """`Auth.SERVER`, `Auth.CLIENT`, or None for an unknown key."""
        given = candidate.encode()
        # Compare against every key so timing does not reveal which prefix matched, nor which kind it is.
        server = any([hmac.compare_digest(given, key) for key in self._server])
        client = any([hmac.compare_digest(given, key) for key in self._client])
        return Auth.SERVER if server else Auth.CLIENT if client else None

    @staticmethod
    def key_from_header(header: str | None) -> str | None:
        """The user part of a Basic Authorization header; None when the header is absent."""
        if not header:
            return None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise RequestRejected(
                401, "unauthorized", f"unsupported Authorization scheme {scheme!r}; {NO_KEY_MESSAGE}"
            )
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text in the header
            raise RequestRejected(
                401, "unauthorized", f"Authorization header is not valid Basic auth; {NO_KEY_MESSAGE}"
            ) from None
        return decoded.partition(":")[0]

    def check_header(self, header: str | None) -> Auth | None:
        """The key's kind when the header authenticates the request, None when there is no header (check the
        body then)."""
        key = self.key_from_header(header)
        if key is None:
            return None
        kind = self.kind(key)
        if kind is None:
            raise RequestRejected(401, "unauthorized", NO_KEY_MESSAGE)
        return kind

    def check_body(self, body: dict[str, Any]) -> Auth:
        """The kind of the body's `writeKey`; `RequestRejected(401)` unless it is a configured key."""
        key = body.get("writeKey")
        kind = self.kind(key) if isinstance(key, str) else None
        if kind is None:
            raise RequestRejected(401, "unauthorized", NO_KEY_MESSAGE)
        return kind
