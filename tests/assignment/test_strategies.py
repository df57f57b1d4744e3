"""Pure strategy tests: no Redis, no clock but the snapshot's."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.assignment.roster import WorkingHours
from engine.assignment.strategies import PoolSnapshot, choose, eligible, fit_score, skip_reason
from tests.assignment.conftest import WEDNESDAY_NOON_UTC, rep, roster

NOW = WEDNESDAY_NOON_UTC


def run_rotation(r, strategy: str, n: int, lead=None, loads=None) -> list[str]:
    """Apply `n` choices in a row the way the store would (cursor and load move after each)."""
    cursors: dict[str, str] = {}
    loads = dict(loads or {})
    picked = []
    for i in range(n):
        choice = choose(strategy, r, PoolSnapshot(NOW, loads, {}, cursors), f"lead-{i}", lead or {})
        assert choice is not None
        if choice.cursor_pool:
            cursors[choice.cursor_pool] = choice.rep.id
        loads[choice.rep.id] = loads.get(choice.rep.id, 0) + 1
        picked.append(choice.rep.id)
    return picked


def test_round_robin_rotates_in_roster_order():
    r = roster(rep("a"), rep("b"), rep("c"))
    assert run_rotation(r, "round_robin", 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_skips_away_off_hours_and_full_reps():
    tokyo_office = WorkingHours(days=("mon", "tue", "wed", "thu", "fri"), start="09:00", end="17:00")
    r = roster(
        rep("a"),
        rep("away", available=False),
        rep("b"),
        rep("tokyo", timezone="Asia/Tokyo", working_hours=tokyo_office),
        rep("full", capacity=0),
        rep("c"),
    )
    snapshot = PoolSnapshot(NOW, {}, {}, {})
    assert skip_reason(r.rep("away"), snapshot) == "away"
    assert skip_reason(r.rep("tokyo"), snapshot) == "off_hours"
    assert skip_reason(r.rep("full"), snapshot) == "at_capacity"
    assert [x.id for x in eligible(r, snapshot)] == ["a", "b", "c"]
    assert Counter(run_rotation(r, "round_robin", 120)) == {"a": 40, "b": 40, "c": 40}


def test_run_time_availability_overrides_the_roster():
    r = roster(rep("a"), rep("b", available=False))
    snapshot = PoolSnapshot(NOW, {}, {"a": False, "b": True}, {})
    assert [x.id for x in eligible(r, snapshot)] == ["b"]


def test_nobody_eligible_gives_none():
    r = roster(rep("a", capacity=1))
    assert choose("round_robin", r, PoolSnapshot(NOW, {"a": 1}), "lead", {}) is None


def test_capacity_is_a_hard_limit():
    r = roster(rep("a", capacity=2), rep("b"))
    picked = Counter(run_rotation(r, "round_robin", 10))
    assert picked == {"a": 2, "b": 8}


def test_least_loaded_picks_fewest_open_leads_and_rotates_ties():
    r = roster(rep("a"), rep("b"), rep("c"))
    picked = run_rotation(r, "least_loaded", 6, loads={"a": 3, "b": 1})
    # c has fewest; b and c then tie and alternate (rotation after the last pick); all at 3 → a's turn
    assert picked == ["c", "b", "c", "b", "c", "a"]


def test_weighted_share_follows_weights_on_a_seeded_sample():
    r = roster(rep("a", weight=1), rep("b", weight=2), rep("c", weight=5))
    n = 20_000
    picked = Counter(choose("weighted", r, PoolSnapshot(NOW), f"lead-{i}", {}).rep.id for i in range(n))
    for rep_id, share in {"a": 1 / 8, "b": 2 / 8, "c": 5 / 8}.items():
        assert picked[rep_id] / n == pytest.approx(share, abs=0.015)


def test_weighted_is_stable_per_lead_and_only_moves_leads_of_an_unavailable_rep():
    r = roster(rep("a"), rep("b"), rep("c"))
    before = {f"l{i}": choose("weighted", r, PoolSnapshot(NOW), f"l{i}", {}).rep.id for i in range(500)}
    again = {f"l{i}": choose("weighted", r, PoolSnapshot(NOW), f"l{i}", {}).rep.id for i in range(500)}
    assert before == again
    without_b = PoolSnapshot(NOW, {}, {"b": False})
    after = {f"l{i}": choose("weighted", r, without_b, f"l{i}", {}).rep.id for i in range(500)}
    moved = {lead for lead in before if before[lead] != after[lead]}
    assert moved == {lead for lead, owner in before.items() if owner == "b"}


def test_territory_best_fit_and_rotation_inside_the_matching_group():
    r = roster(
        rep("fr1", territories=["FR"], segments=["smb"]),
        rep("fr2", territories=["fr"], segments=["enterprise"]),
        rep("fr3", territories=["FR"]),
        rep("us", territories=["US"], segments=["enterprise"]),
    )
    enterprise_fr = {"traits": {"country": "FR", "segment": "Enterprise"}}
    assert fit_score(r.rep("fr2"), enterprise_fr["traits"]) == 3
    assert set(run_rotation(r, "territory", 5, lead=enterprise_fr)) == {"fr2"}
    assert run_rotation(r, "territory", 4, lead={"territory": "fr"}) == ["fr1", "fr2", "fr3", "fr1"]
    nested = {"traits": {"address": {"country": "US"}}}
    assert choose("territory", r, PoolSnapshot(NOW), "x", nested).rep.id == "us"


def test_territory_falls_back_when_no_eligible_rep_matches():
    r = roster(rep("fr", territories=["FR"]), rep("a"), rep("b"), fallback="round_robin")
    nobody = choose("territory", r, PoolSnapshot(NOW), "x", {"country": "JP"})
    assert nobody.strategy == "territory>round_robin"
    assert nobody.rep.id == "fr"  # the fallback rotates over every eligible rep
    fr_away = choose("territory", r, PoolSnapshot(NOW, {}, {"fr": False}), "y", {"country": "FR"})
    assert fr_away.rep.id == "a" and fr_away.strategy == "territory>round_robin"


def test_overnight_working_hours_belong_to_the_start_day():
    from datetime import datetime

    night = WorkingHours(days=("fri",), start="22:00", end="06:00")
    assert night.contains(datetime(2026, 11, 27, 23, 0))  # Friday 23:00
    assert night.contains(datetime(2026, 11, 28, 5, 0))  # Saturday 05:00, Friday's shift
    assert not night.contains(datetime(2026, 11, 28, 23, 0))  # Saturday 23:00
    assert not night.contains(datetime(2026, 11, 27, 5, 0))  # Friday 05:00 is Thursday's shift


def test_working_hours_use_the_reps_time_zone():
    office = WorkingHours(start="09:00", end="17:00")
    paris = rep("p", timezone="Europe/Paris", working_hours=office)
    new_york = rep("n", timezone="America/New_York", working_hours=office)
    assert paris.on_duty(NOW)  # 13:00 in Paris
    assert not new_york.on_duty(NOW)  # 07:00 in New York
    assert new_york.on_duty(NOW + 3 * 3600)  # 10:00 in New York
