"""The sales reps roster: who can receive hot leads, where, when and how many. Static configuration: run-time
availability changes (CLI, HTTP) live in Redis (`AssignmentStore`) and override `Rep.available`; the roster file
is never rewritten."""

from __future__ import annotations

import re
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class RosterError(ValueError):
    """The roster file cannot be used; the message says where (file:line), what is wrong and how to fix it."""


def parse_duration_s(value: Any) -> float:
    """Seconds from `90`, `"30s"`, `"15m"`, `"2h"`, `"1d"` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 15m, 30s or 2h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 15m, 30s or 2h")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be a positive duration, e.g. 15m")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkingHours(_Strict):
    """Local working window of a rep: `days` plus `start`-`end` ("HH:MM"); end < start wraps past midnight."""

    days: tuple[str, ...] = DAYS[:5]
    start: time = time(9, 0)
    end: time = time(18, 0)

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> tuple[str, ...]:
        days = [value] if isinstance(value, str) else list(value)
        out = []
        for day in days:
            short = str(day).strip().lower()[:3]
            if short not in DAYS:
                raise ValueError(f"{day!r} is not a day; use {', '.join(DAYS)}")
            out.append(short)
        return tuple(out)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hhmm(cls, value: Any) -> time:
        if isinstance(value, int):  # YAML reads 09:00 unquoted as sexagesimal minutes (540)
            value = f"{value // 60:02d}:{value % 60:02d}"
        match = re.match(r"^(\d{1,2}):(\d{2})$", str(value).strip())
        if not match or int(match.group(1)) > 24 or int(match.group(2)) > 59:
            raise ValueError(f'{value!r} is not a time of day; write it as "HH:MM", e.g. "09:30"')
        hour, minute = int(match.group(1)), int(match.group(2))
        return time(23, 59, 59, 999999) if hour == 24 else time(hour, minute)

    def contains(self, local: datetime) -> bool:
        """True when the local wall-clock time falls in the window (the start day owns an overnight shift)."""
        now, day = local.time(), DAYS[local.weekday()]
        if self.start <= self.end:
            return day in self.days and self.start <= now < self.end
        previous_day = DAYS[(local.weekday() - 1) % 7]
        return (day in self.days and now >= self.start) or (previous_day in self.days and now < self.end)


class Rep(_Strict):
    """One sales rep. `capacity` = most open (not released) leads at once; `weight` steers `weighted`."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    name: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    slack_id: str | None = None
    territories: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    capacity: int = Field(default=50, ge=0)
    timezone: str = "UTC"
    working_hours: WorkingHours | None = None  # None: always on duty
    weight: float = Field(default=1.0, gt=0)
    available: bool = True

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone; write e.g. Europe/Paris or America/New_York"
            ) from None
        return value

    @field_validator("territories", "segments", mode="before")
    @classmethod
    def _upper_list(cls, value: Any) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else list(value or ())
        return tuple(str(v).strip().lower() for v in values)

    def on_duty(self, now_s: float) -> bool:
        """Inside working hours at `now_s` (epoch seconds) in the rep's own time zone."""
        if self.working_hours is None:
            return True
        return self.working_hours.contains(datetime.fromtimestamp(now_s, ZoneInfo(self.timezone)))

    def card(self) -> dict[str, Any]:
        """The rep as templates and notifications see it (no capacity or weights)."""
        return {"id": self.id, "name": self.name, "email": self.email, "slack_id": self.slack_id}


class SlaPolicy(_Strict):
    """How long an assigned rep has to acknowledge a lead before it moves to another rep, and how long a hot lead
    may wait in the queue (every eligible rep at capacity) before the team channel hears about it."""

    ack_within_s: float = 900.0
    max_reassignments: int = Field(default=3, ge=0)
    queue_alert_after_s: float | None = 600.0  # None (`queue_alert_after: off`): never alert
    team_channel: str | None = None  # Slack channel of the queue alert; None: the Slack connector's own channel

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "ack_within" in data:
                data["ack_within_s"] = parse_duration_s(data.pop("ack_within"))
            if "queue_alert_after" in data:
                raw = data.pop("queue_alert_after")
                off = raw is None or raw is False or str(raw).strip().lower() in ("off", "never")
                data["queue_alert_after_s"] = None if off else parse_duration_s(raw)
        return data


class ReleasePolicy(_Strict):
    """When a lead's owner is released on its own (`nudge reps serve` watches `lead-updates` and the clickstream):
    the lead reaches one of `stages` (case-insensitive), or one of `events` (track event names) happens."""

    stages: tuple[str, ...] = ("customer", "lost")
    events: tuple[str, ...] = ()

    @field_validator("stages", "events", mode="before")
    @classmethod
    def _names(cls, value: Any) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else list(value or ())
        return tuple(str(v).strip() for v in values if str(v).strip())

    @field_validator("stages")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)

    def reason_for_stage(self, stage: Any) -> str | None:
        if isinstance(stage, str) and stage.strip().lower() in self.stages:
            return f"stage:{stage.strip().lower()}"
        return None

    def reason_for_event(self, name: Any) -> str | None:
        return f"event:{name}" if isinstance(name, str) and name in self.events else None


class Roster(_Strict):
    """All reps in file order (the order round-robin rotates in), the default strategy and the SLA policy."""

    strategy: Literal["round_robin", "least_loaded", "territory", "weighted"] = "round_robin"
    fallback: Literal["round_robin", "least_loaded", "weighted"] = "round_robin"
    sla: SlaPolicy = SlaPolicy()
    release_on: ReleasePolicy = ReleasePolicy()
    reps: tuple[Rep, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> Roster:
        seen: set[str] = set()
        for rep in self.reps:
            if rep.id in seen:
                raise ValueError(f"rep id {rep.id!r} appears twice; every rep needs its own id")
            seen.add(rep.id)
        return self

    def rep(self, rep_id: str) -> Rep | None:
        return next((r for r in self.reps if r.id == rep_id), None)

    @property
    def rep_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.reps)


# --- YAML with line numbers
# -------------------------------------------------------------------------------------------


def _construct(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    """Plain Python value of a composed YAML node, recording the 1-based line of every path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            out[key] = _construct(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1  # errors about a field point at its key
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _line_of(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def parse_roster(text: str, source: str = "<reps>") -> Roster:
    """A `Roster` from YAML text; `source` names the file in error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RosterError(
            f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}); check indentation and quotes"
        ) from None
    lines: dict[tuple[Any, ...], int] = {}
    data = _construct(node, (), lines) if node is not None else {}
    if not isinstance(data, dict):
        raise RosterError(f"{source}:1: the roster must be a mapping with a `reps:` list")
    try:
        return Roster.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field; check the spelling (see reps.yaml for the accepted fields)"
            problems.append(f"{source}:{_line_of(loc, lines)}: {field}: {message}")
        raise RosterError("\n".join(problems)) from None


def load_roster(path: Path | str) -> Roster:
    """Read and validate the roster file (see `reps.yaml` at the repo root) into an immutable `Roster`.

    Raises `RosterError` whose message names the file, the line and the field, says what is wrong and how to fix
    it: duplicate rep ids, unknown time zones, unknown strategies, capacity < 0, weight <= 0, a malformed "HH:MM"
    time or day name, an `ack_within` that is not a positive duration; a missing file names the setting to change.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RosterError(
            f"{path}: no such roster file; create it (see reps.yaml) or set NUDGE_REPS_PATH"
        ) from None
    return parse_roster(text, str(path))
