"""Keeping secrets out of logs, delivery records, dead letters and exception messages."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

MIN_SECRET_LEN = 4
MASK = "***"


class Redactor:
    """Replaces every known secret value (and its URL-encoded form) in a text with `***`.

    It knows every secret of the loaded connectors file (passwords, tokens, signing keys, Slack webhook URLs,
    header values). Every text that leaves the dispatcher (log line, `reason`/`detail` of a record) goes through
    `redact()`; connectors also keep secrets out of their messages in the first place (defence in depth).
    Values shorter than `MIN_SECRET_LEN` are not redacted (an empty or one-letter "secret" would redact
    everything).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LEN:
                self._secrets.add(secret)
                self._secrets.add(quote(secret, safe=""))
        # Longest first so a secret that contains another is masked whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def redact(self, text: object) -> str:
        out = str(text)
        if self._pattern is None:
            return out
        return self._pattern.sub(MASK, out)

    def __contains__(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None
