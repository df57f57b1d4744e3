"""Pure choice of a rep for a lead: no I/O, no clock, no randomness beyond a hash of the lead id. The store applies
the choice atomically and re-checks it (`AssignmentStore.commit`), so this code never reasons about concurrency."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.assignment.roster import Rep, Roster

ROUND_ROBIN_POOL = "round_robin"
TERRITORY_KEYS = ("territory", "country", "region", "state")
SEGMENT_KEYS = ("segment",)


@dataclass(frozen=True)
class PoolSnapshot:
    """What the strategies see of the shared state at one moment."""

    now_s: float
    loads: Mapping[str, int] = field(default_factory=dict)  # rep id -> open leads
    availability: Mapping[str, bool] = field(default_factory=dict)  # run-time overrides of Rep.available
    cursors: Mapping[str, str] = field(default_factory=dict)  # rotation pool -> last rep chosen in it


@dataclass(frozen=True)
class Choice:
    """The chosen rep; `cursor_pool`: the rotation whose cursor moves to `rep.id` (None: no rotation)."""

    rep: Rep
    strategy: str
    cursor_pool: str | None
    uses_loads: bool = False  # the choice compared loads: the commit must see the loads unchanged


def skip_reason(rep: Rep, snapshot: PoolSnapshot) -> str | None:
    """Why `rep` cannot take a lead now ("away", "off_hours", "at_capacity"), or None when eligible."""
    if not snapshot.availability.get(rep.id, rep.available):
        return "away"
    if not rep.on_duty(snapshot.now_s):
        return "off_hours"
    if snapshot.loads.get(rep.id, 0) >= rep.capacity:
        return "at_capacity"
    return None


def eligible(roster: Roster, snapshot: PoolSnapshot, exclude: Iterable[str] = ()) -> list[Rep]:
    excluded = set(exclude)
    return [r for r in roster.reps if r.id not in excluded and skip_reason(r, snapshot) is None]


def lead_traits(lead: Mapping[str, Any]) -> dict[str, Any]:
    """Traits of a lead from an action context (`{"traits": {...}, "score": ..}`) or a flat traits dict."""
    traits = dict(lead)
    nested = lead.get("traits")
    if isinstance(nested, Mapping):
        traits.update(nested)
    address = traits.get("address")
    if isinstance(address, Mapping):
        for key in ("country", "state", "region"):
            traits.setdefault(key, address.get(key))
    return traits


def _values(traits: Mapping[str, Any], keys: Sequence[str]) -> set[str]:
    return {str(traits[k]).strip().lower() for k in keys if traits.get(k) not in (None, "")}


def fit_score(rep: Rep, traits: Mapping[str, Any]) -> int:
    """2 points for a territory match, 1 for a segment match."""
    score = 2 if _values(traits, TERRITORY_KEYS) & set(rep.territories) else 0
    if _values(traits, SEGMENT_KEYS) & set(rep.segments):
        score += 1
    return score


def next_in_rotation(order: Sequence[str], candidates: Sequence[Rep], last: str | None) -> Rep:
    """First candidate after `last` in `order`, wrapping around (`last` unknown: start at the top)."""
    by_id = {r.id: r for r in candidates}
    start = order.index(last) + 1 if last in order else 0
    for i in range(len(order)):
        rep = by_id.get(order[(start + i) % len(order)])
        if rep is not None:
            return rep
    raise ValueError("next_in_rotation needs at least one candidate from `order`")


def _rendezvous(lead_id: str, rep: Rep) -> float:
    digest = hashlib.blake2b(f"{lead_id}\x1f{rep.id}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / 2**64  # uniform in (0, 1)
    return -math.log(unit) / rep.weight  # exponential race: P(win) = weight / sum(weights)


def pick_weighted(lead_id: str, candidates: Sequence[Rep]) -> Rep:
    return min(candidates, key=lambda rep: _rendezvous(lead_id, rep))


def _by_strategy(
    strategy: str, roster: Roster, snapshot: PoolSnapshot, lead_id: str, candidates: list[Rep]
) -> Choice:
    order = roster.rep_ids
    if strategy == "round_robin":
        rep = next_in_rotation(order, candidates, snapshot.cursors.get(ROUND_ROBIN_POOL))
        return Choice(rep, strategy, ROUND_ROBIN_POOL)
    if strategy == "least_loaded":
        fewest = min(snapshot.loads.get(r.id, 0) for r in candidates)
        tied = [r for r in candidates if snapshot.loads.get(r.id, 0) == fewest]
        pool = "least_loaded"
        return Choice(
            next_in_rotation(order, tied, snapshot.cursors.get(pool)), strategy, pool, uses_loads=True
        )
    if strategy == "weighted":
        return Choice(pick_weighted(lead_id, candidates), strategy, None)
    raise ValueError(
        f"unknown strategy {strategy!r}; use one of round_robin, least_loaded, territory, weighted"
    )


def choose(
    strategy: str,
    roster: Roster,
    snapshot: PoolSnapshot,
    lead_id: str,
    lead: Mapping[str, Any],
    exclude: Iterable[str] = (),
) -> Choice | None:
    """The rep for this lead under `strategy`: a `Choice` (the rep, the strategy that actually decided, and the
    rotation cursor to advance), or None when no rep is eligible.

    Eligible = available (roster default, overridden at run time by `PoolSnapshot.availability`), on duty in the
    rep's own time zone at `PoolSnapshot.now_s`, below capacity (`PoolSnapshot.loads` = open leads) and not in
    `exclude`. Ineligible reps are never chosen, whatever the strategy:
    - `round_robin`: the next eligible rep after the pool's cursor, in roster order. With a steady set of eligible
      reps the counts differ by at most one.
    - `least_loaded`: fewest open leads; ties go to the rep next in rotation.
    - `weighted`: rendezvous hashing of (lead id, rep id) scaled by weight: share of leads proportional to weight,
      the same lead always prefers the same rep (replays agree), and a full or away rep only moves its own leads.
    - `territory`: best fit on lead traits (territory/country match 2 points, segment match 1); ties rotate inside
      the matching group; no eligible match → the roster's `fallback` strategy over all eligible reps.
    """
    candidates = eligible(roster, snapshot, exclude)
    if not candidates:
        return None
    if strategy != "territory":
        return _by_strategy(strategy, roster, snapshot, lead_id, candidates)
    traits = lead_traits(lead)
    scores = {r.id: fit_score(r, traits) for r in candidates}
    best = max(scores.values())
    if best == 0:
        fallback = _by_strategy(roster.fallback, roster, snapshot, lead_id, candidates)
        return Choice(
            fallback.rep, f"territory>{fallback.strategy}", fallback.cursor_pool, fallback.uses_loads
        )
    group = [r for r in candidates if scores[r.id] == best]
    pool = "territory:" + ",".join(r.id for r in group)  # one rotation per group of equally fit reps
    return Choice(next_in_rotation(roster.rep_ids, group, snapshot.cursors.get(pool)), "territory", pool)
