"""Retry policy: exponential backoff with jitter, honouring a peer's Retry-After."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field


class RetryConfig(BaseModel):
    """Retry budget and backoff of one connector (`retry:` in the connectors file); delays are >= 0."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(6, ge=1, description="attempts in total, the first one included")
    base_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(300.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    max_retry_after_s: float = Field(3600.0, ge=0, description="cap on a peer's Retry-After hint")


class RetryPolicy:
    """Backoff for one connector; stateless apart from the random source."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()

    def backoff_s(self, attempt: int) -> float:
        """The jittered backoff after attempt `attempt`, without budget or Retry-After."""
        raw = self.config.base_delay_s * self.config.multiplier ** max(0, attempt - 1)
        capped = min(self.config.max_delay_s, raw)
        return capped * self._rng.uniform(0.5, 1.0)

    def next_delay_s(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        """The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed, or None when the budget
        (`max_attempts`) is spent. The delay is `min(max_delay, base * multiplier**(attempt-1))` scaled by a random
        factor in [0.5, 1.0] ("equal jitter": spreads retries of many actions without ever retrying sooner than
        half the backoff), and never less than the peer's Retry-After (capped at `max_retry_after_s`)."""
        if attempt >= self.config.max_attempts:
            return None
        delay = self.backoff_s(attempt)
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, min(retry_after_s, self.config.max_retry_after_s))
        return delay
