"""Quiet hours: no marketing message to a lead during the night of the lead's own timezone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator


class QuietHoursConfig(BaseModel):
    """`policies.quiet_hours`: local wall-clock window, the connectors it applies to, marketing only?"""

    model_config = ConfigDict(extra="forbid")

    start: dtime = Field(dtime(21, 0), description="local time the quiet period starts (HH:MM)")
    end: dtime = Field(dtime(8, 0), description="local time it ends (HH:MM)")
    connectors: list[str] = Field(
        default_factory=lambda: ["*"], description='connector names, or "*" for all'
    )
    marketing_only: bool = Field(True, description="sales alerts to reps are not held back")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _wall_time(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted 21:00 as the sexagesimal number 1260 (minutes): take it as meant.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
            return dtime(value // 60, value % 60)
        return value

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: dtime) -> dtime:
        return value.replace(tzinfo=None)  # local wall time in the lead's timezone, never a fixed offset


@lru_cache(maxsize=512)
def zone(name: str | None) -> ZoneInfo | None:
    """The IANA timezone `name`, or None when empty or unknown (cached)."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


class QuietHours:
    """Pure quiet-hours check. The constructor raises ValueError for an unknown default timezone (the
    connectors file loader validates it first)."""

    def __init__(self, config: QuietHoursConfig, default_timezone: str) -> None:
        default = zone(default_timezone)
        if default is None:
            raise ValueError(
                f"unknown default timezone {default_timezone!r}; use an IANA name like Europe/Paris"
            )
        self.config = config
        self.default = default

    def applies(self, connector: str, marketing: bool) -> bool:
        """Do quiet hours hold back this connector's actions of this kind?"""
        if self.config.marketing_only and not marketing:
            return False
        return "*" in self.config.connectors or connector in self.config.connectors

    def next_allowed_ms(self, now_ms: int, tz_name: str | None) -> int | None:
        """None when sending is allowed at `now_ms`, else the epoch ms when the quiet period ends in the lead's
        timezone `tz_name` (an unknown or missing one falls back to the default). A window whose start is after
        its end spans midnight (21:00-08:00); start == end means no quiet hours."""
        start, end = self.config.start, self.config.end
        if start == end:
            return None
        tz = zone(tz_name) or self.default
        local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(tz)
        t = local.time().replace(tzinfo=None)
        if start < end:
            quiet = start <= t < end
            end_date = local.date()
        else:  # spans midnight
            quiet = t >= start or t < end
            end_date = local.date() + timedelta(days=1) if t >= start else local.date()
        if not quiet:
            return None
        resume = datetime.combine(end_date, end, tzinfo=tz)
        return max(now_ms + 1, int(resume.timestamp() * 1000))
