"""Roster loading: the sample file is valid; every mistake names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.assignment.roster import RosterError, load_roster, parse_duration_s, parse_roster

REPO = Path(__file__).resolve().parents[2]


def test_sample_roster_loads():
    roster = load_roster(REPO / "reps.yaml")
    assert roster.strategy == "territory"
    assert roster.sla.ack_within_s == 900
    assert len(roster.reps) >= 3
    assert roster.rep("alice").territories == ("fr", "be", "ch", "lu")


def error_of(text: str) -> str:
    with pytest.raises(RosterError) as info:
        parse_roster(text, "reps.yaml")
    return str(info.value)


GOOD_REP = "  - {id: a, name: A, email: a@example.com}\n"


def test_unknown_time_zone_points_at_its_line():
    second = "  - id: b\n    name: B\n    email: b@x.io\n    timezone: Mars/Base\n"
    message = error_of("reps:\n" + GOOD_REP + second)
    assert "reps.yaml:6: reps.1.timezone" in message
    assert "IANA time zone" in message


def test_duplicate_ids_unknown_fields_bad_times():
    assert "appears twice" in error_of("reps:\n" + GOOD_REP + GOOD_REP)
    message = error_of("reps:\n  - id: a\n    name: A\n    email: a@x.io\n    capacty: 3\n")
    assert "reps.yaml:5: reps.0.capacty: unknown field" in message
    message = error_of("reps:\n  - id: a\n    name: A\n    email: a@x.io\n    working_hours: {start: 9am}\n")
    assert "reps.yaml:5" in message and "HH:MM" in message
    assert "reps.yaml:1: strategy" in error_of("strategy: random\n")
    assert "not valid YAML" in error_of("reps: [\n")


def test_unquoted_times_and_durations():
    text = (
        "sla: {ack_within: 2h}\n"
        "reps:\n  - {id: a, name: A, email: a@x.io, working_hours: {start: 10:30, end: 19:00}}\n"
    )
    roster = parse_roster(text)
    assert roster.sla.ack_within_s == 7200
    assert str(roster.rep("a").working_hours.start) == "10:30:00"
    assert parse_duration_s("15m") == 900 and parse_duration_s(30) == 30
    with pytest.raises(ValueError):
        parse_duration_s("soon")


def test_missing_file_says_which_setting():
    with pytest.raises(RosterError, match="NUDGE_REPS_PATH"):
        load_roster("/nonexistent/reps.yaml")
