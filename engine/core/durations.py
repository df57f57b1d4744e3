"""Durations as rule authors write them: an integer and a unit, `90s`, `30m`, `4h`, `7d` (also `500ms`, `2w`)."""

from __future__ import annotations

import re

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: object) -> int:
    """Milliseconds, or `ValueError` with a message that says how to fix the text."""
    if isinstance(text, str):
        found = _PATTERN.match(text)
        if found:
            return int(found.group(1)) * UNITS_MS[found.group(2)]
    raise ValueError(
        f"bad duration {text!r}: write a whole number and a unit (ms, s, m, h, d, w), e.g. 90s, 30m, 4h, 7d"
    )


def format_duration(ms: int) -> str:
    """The inverse of `parse_duration` in the largest whole unit (used in explanations)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
