"""Retry policy: exponential backoff with jitter, honouring a peer's Retry-After.

Contract: `RetryPolicy.next_delay_s(attempt, retry_after_s)` gives the wait before attempt `attempt + 1` after
attempt `attempt` (1-based) failed, or `None` when the budget (`max_attempts`) is spent. The delay is
`min(max_delay, base * multiplier**(attempt-1))` scaled by a random factor in [0.5, 1.0] ("equal jitter":
spreads retries of many actions without ever retrying sooner than half the backoff), and never less than the
peer's Retry-After (capped at `max_retry_after_s`). `parse_retry_after` reads both HTTP forms (seconds or
HTTP-date).
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from connectors.base import RetryConfig


class RetryPolicy:
    """Backoff for one connector; stateless apart from the random source."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()

    def backoff_s(self, attempt: int) -> float:
        raw = self.config.base_delay_s * self.config.multiplier ** max(0, attempt - 1)
        capped = min(self.config.max_delay_s, raw)
        return capped * self._rng.uniform(0.5, 1.0)

    def next_delay_s(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        if attempt >= self.config.max_attempts:
            return None
        delay = self.backoff_s(attempt)
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, min(retry_after_s, self.config.max_retry_after_s))
        return delay


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (`120` or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)
