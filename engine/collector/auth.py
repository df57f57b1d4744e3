"""Write-key authentication, as the Segment and RudderStack SDKs send it."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable
from typing import Any

from engine.collector.errors import RequestRejected
from engine.config import ConfigError

NO_KEY_MESSAGE = (
    "missing or unknown write key: send it as HTTP Basic auth user "
    "(`Authorization: Basic base64(<writeKey>:)`) or as `writeKey` in the JSON body"
)


class WriteKeys:
    """The configured write keys. A request is authenticated when its `Authorization: Basic base64(<writeKey>:)`
    header (the write key as user, empty password) names a configured key or, when it has no Authorization header,
    when its JSON body carries a configured `writeKey` (Segment's HTTP API accepts both). `check_header` /
    `check_body` raise `RequestRejected(401, "unauthorized")` otherwise. Keys are compared in constant time. An
    empty key set raises `ConfigError`: the collector never runs open.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)
        if not self._keys:
            raise ConfigError(
                "no write keys configured: set NUDGE_WRITE_KEYS to a comma-separated list of the SDKs' keys"
            )

    def _known(self, candidate: str) -> bool:
        given = candidate.encode()
        # Compare against every key so timing does not reveal which prefix matched.
        return any([hmac.compare_digest(given, key) for key in self._keys])

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

    def check_header(self, header: str | None) -> bool:
        """True when the header authenticates the request, False when there is no header (check the body
        then)."""
        key = self.key_from_header(header)
        if key is None:
            return False
        if not self._known(key):
            raise RequestRejected(401, "unauthorized", NO_KEY_MESSAGE)
        return True

    def check_body(self, body: dict[str, Any]) -> None:
        """Raise `RequestRejected(401)` unless the body's `writeKey` is a configured key."""
        key = body.get("writeKey")
        if not isinstance(key, str) or not self._known(key):
            raise RequestRejected(401, "unauthorized", NO_KEY_MESSAGE)
