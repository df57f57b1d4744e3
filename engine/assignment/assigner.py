"""`Assigner`: the API the dispatcher, the HTTP endpoints and the CLI use to own, acknowledge and move hot
leads."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine import metrics
from engine.assignment.model import Assignment, SlaBreach
from engine.assignment.roster import Roster
from engine.assignment.store import PREFIX, AssignmentStore, StoreSnapshot
from engine.assignment.strategies import PoolSnapshot, choose, skip_reason


class AssignmentContention(RuntimeError):
    """The state kept changing under every attempt; retry later (a sign of a very hot Redis, not of a bug)."""


class UnknownRep(KeyError):
    """A rep id that is not in the roster."""


@dataclass(frozen=True)
class AckResult:
    status: str  # "ok" | "already" | "not_owner" | "unknown"
    owner: str | None

    @property
    def acked(self) -> bool:
        return self.status in ("ok", "already")


@dataclass(frozen=True)
class RepStatus:
    """A rep as `nudge reps list` shows it."""

    id: str
    name: str
    available: bool
    on_duty: bool
    open_leads: int
    capacity: int
    assigned_total: int
    skip_reason: str | None


class Assigner:
    """Owns, acknowledges, moves and releases hot leads for the dispatcher, the HTTP endpoints and the CLI.

    Idempotency: `assign(lead_id, lead)` is idempotent per lead: the first call anywhere (any process) picks a rep
    and stores it; every later call returns that owner with `created=False`. `release` and `ack` may be repeated.

    Concurrency: each choice is made by the pure `strategies.choose` on a snapshot and committed by a Lua script
    that rejects stale snapshots (`AssignmentStore.commit`); on rejection the assigner re-reads and chooses again,
    at most `max_attempts` times, then raises `AssignmentContention`. Calls within one `Assigner` are serialised
    (one lock) so a process does not compete with itself; throughput is a few thousand assignments per second, far
    above any hot-lead rate. Redis errors propagate.

    Time: `clock()` returns epoch seconds (default `time.time`): working hours, assignment times and SLA deadlines
    all use it, so tests control time by passing their own clock.

    SLA: the deadline is `assigned_at + roster.sla.ack_within_s`; `ack` stops it; `due_sla_breaches` lists leads
    past it; `reassign` moves a lead to another rep (previous owners are tried last). Notifications are built by
    `SlaMonitor` / `notifications`, never sent from here.
    """
    def __init__(
        self,
        redis: aioredis.Redis,
        roster: Roster,
        *,
        strategy: str | None = None,
        clock: Callable[[], float] = time.time,
        prefix: str = PREFIX,
        max_attempts: int = 200,
    ) -> None:
        self.roster = roster
        self.strategy = strategy or roster.strategy
        self.clock = clock
        self.store = AssignmentStore(redis, prefix)
        self.max_attempts = max_attempts
        self._lock = asyncio.Lock()
        self.retries = 0  # commits rejected as stale (also counted in nudge_assignment_retries_total)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _deadline(self, now_ms: int) -> int:
        return now_ms + int(self.roster.sla.ack_within_s * 1000)

    def _from_owner(self, lead_id: str, owner: Mapping[str, str], created: bool) -> Assignment:
        rep = self.roster.rep(owner["rep"])
        deadline = owner.get("sla_deadline_ms")
        acked = owner.get("acked_at_ms")
        tried = [r for r in owner.get("tried", "").split(",") if r]
        return Assignment(
            lead_id=lead_id,
            rep_id=owner["rep"],
            name=rep.name if rep else owner["rep"],
            email=rep.email if rep else "",
            slack_id=rep.slack_id if rep else None,
            strategy=owner.get("strategy", ""),
            assigned_at_ms=int(owner.get("assigned_at_ms") or 0),
            sla_deadline_ms=int(deadline) if deadline else None,
            created=created,
            previous_rep_id=tried[-2] if len(tried) > 1 else None,
            reassignments=int(owner.get("reassignments") or 0),
            acked_at_ms=int(acked) if acked else None,
        )

    async def _place(
        self,
        lead_id: str,
        lead: Mapping[str, Any],
        *,
        previous: str | None,
        reason: str,
        breached_deadline_ms: int | None = None,
    ) -> Assignment | None:
        for attempt in range(self.max_attempts):
            snap: StoreSnapshot = await self.store.snapshot(lead_id)
            if previous is None and snap.owner.get("rep"):
                metrics.ASSIGNMENTS.labels("existing").inc()
                return self._from_owner(lead_id, snap.owner, created=False)
            if previous is not None and snap.owner.get("rep") != previous:
                return None  # released or moved by someone else meanwhile
            if breached_deadline_ms is not None and (
                snap.owner.get("acked_at_ms")
                or snap.owner.get("sla_deadline_ms") != str(breached_deadline_ms)
            ):
                return None  # acknowledged, or the SLA clock was restarted, since the breach was seen
            now_s = self.clock()
            now_ms = int(now_s * 1000)
            pool = PoolSnapshot(now_s, snap.loads, snap.availability, snap.cursors)
            tried = [r for r in snap.owner.get("tried", "").split(",") if r]
            choice = choose(self.strategy, self.roster, pool, lead_id, lead, exclude=tried)
            if choice is None and previous is not None:  # everybody was tried: any rep but the current one
                choice = choose(self.strategy, self.roster, pool, lead_id, lead, exclude=[previous])
            if choice is None:
                metrics.ASSIGNMENTS.labels("unassigned").inc()
                return None
            deadline = self._deadline(now_ms)
            kind = "reassigned" if previous else "assigned"
            entry = {"at_ms": now_ms, "event": kind, "rep": choice.rep.id, "strategy": choice.strategy}
            if previous:
                entry |= {"previous_rep": previous, "reason": reason}
            result = await self.store.commit(
                lead_id,
                rep_id=choice.rep.id,
                capacity=choice.rep.capacity,
                cursor_pool=choice.cursor_pool,
                expected_cursor=snap.cursors.get(choice.cursor_pool or ""),
                expected_version=snap.version if choice.uses_loads else None,
                previous_rep=previous,
                deadline_ms=deadline,
                breached_deadline_ms=breached_deadline_ms,
                history_entry=entry,
                fields={
                    "rep": choice.rep.id,
                    "strategy": choice.strategy,
                    "assigned_at_ms": now_ms,
                    "lead": orjson.dumps(dict(lead), default=str),
                },
            )
            if result.status == "ok":
                metrics.ASSIGNMENTS.labels(kind).inc()
                rep = choice.rep
                return Assignment(
                    lead_id=lead_id, rep_id=rep.id, name=rep.name, email=rep.email, slack_id=rep.slack_id,
                    strategy=choice.strategy, assigned_at_ms=now_ms, sla_deadline_ms=deadline, created=True,
                    previous_rep_id=previous, reassignments=int(result.detail or 0),
                )  # fmt: skip
            if result.status == "moved":
                return None  # a reassignment whose premise no longer holds (see store.commit)
            if result.status == "owned":
                continue  # the next snapshot shows the owner and returns it
            # conflict: another process changed what this choice relied on; back off a little, then re-read
            self.retries += 1
            metrics.ASSIGNMENT_RETRIES.inc()
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise AssignmentContention(f"could not assign lead {lead_id!r} in {self.max_attempts} attempts")

    async def assign(self, lead_id: str, lead: Mapping[str, Any] | None = None) -> Assignment | None:
        """The lead's owner, assigning one when it has none; None when no rep is eligible right now (everybody
        away, off hours or full): nothing is stored then and the caller may retry later. `lead` is the lead as
        the action context carries it (traits: email, name, company, country/territory, segment; score; stage);
        it is stored with the owner so a reassignment can use the same traits.
        """
        async with self._lock:
            return await self._place(lead_id, lead or {}, previous=None, reason="")

    async def owner(self, lead_id: str) -> Assignment | None:
        owner = await self.store.owner(lead_id)
        return self._from_owner(lead_id, owner, created=False) if owner.get("rep") else None

    async def lead_of(self, lead_id: str) -> dict[str, Any]:
        """The lead context stored with the owner (empty when the lead has no owner)."""
        raw = (await self.store.owner(lead_id)).get("lead")
        return orjson.loads(raw) if raw else {}

    async def ack_detail(self, lead_id: str, rep_id: str | None = None) -> AckResult:
        """Acknowledge as `rep_id` (None: whoever owns it). Only the current owner can acknowledge."""
        now_ms = self.now_ms()
        entry = {"at_ms": now_ms, "event": "acked", "rep": rep_id}
        status, owner = await self.store.ack(lead_id, rep_id, now_ms, entry)
        return AckResult(status, owner or None)

    async def ack(self, lead_id: str, rep_id: str | None = None) -> bool:
        return (await self.ack_detail(lead_id, rep_id)).acked

    async def due_sla_breaches(self, limit: int = 100) -> list[SlaBreach]:
        now_ms = self.now_ms()
        breaches = []
        for lead_id in await self.store.due(now_ms, limit):
            owner = await self.store.owner(lead_id)
            if not owner.get("rep") or owner.get("acked_at_ms") or not owner.get("sla_deadline_ms"):
                await self.store.drop_deadline(lead_id)  # stale index entry: nothing to enforce
                continue
            breaches.append(
                SlaBreach(
                    lead_id=lead_id,
                    rep_id=owner["rep"],
                    assigned_at_ms=int(owner.get("assigned_at_ms") or 0),
                    deadline_ms=int(owner["sla_deadline_ms"]),
                    reassignments=int(owner.get("reassignments") or 0),
                )
            )
        return breaches

    async def reassign(
        self,
        lead_id: str,
        reason: str,
        *,
        expected_rep: str | None = None,
        breach: SlaBreach | None = None,
    ) -> Assignment | None:
        """Move the lead to another eligible rep; None: no owner, moved meanwhile, or nobody else fits.

        With `breach`, the move happens only if that breach still stands (same owner, not acknowledged, same
        deadline), atomically: an ack that lands between detection and move wins.
        """
        if breach is not None:
            expected_rep = breach.rep_id
        owner = await self.store.owner(lead_id)
        current = owner.get("rep")
        if not current or (expected_rep is not None and current != expected_rep):
            return None
        lead = orjson.loads(owner["lead"]) if owner.get("lead") else {}
        async with self._lock:
            return await self._place(
                lead_id,
                lead,
                previous=current,
                reason=reason,
                breached_deadline_ms=breach.deadline_ms if breach else None,
            )

    async def set_deadline(self, lead_id: str, rep_id: str, deadline_ms: int | None, event: str) -> bool:
        entry = {"at_ms": self.now_ms(), "event": event, "rep": rep_id, "deadline_ms": deadline_ms}
        return await self.store.set_deadline(lead_id, rep_id, deadline_ms, entry)

    async def release(self, lead_id: str) -> None:
        await self.store.release(lead_id, {"at_ms": self.now_ms(), "event": "released"})

    async def set_availability(self, rep_id: str, available: bool) -> None:
        if self.roster.rep(rep_id) is None:
            raise UnknownRep(rep_id)
        await self.store.set_availability(rep_id, available)

    async def rep_statuses(self) -> list[RepStatus]:
        loads, availability, totals = (
            await self.store.loads(),
            await self.store.availability(),
            await self.store.totals(),
        )
        pool = PoolSnapshot(self.clock(), loads, availability)
        return [
            RepStatus(
                id=rep.id,
                name=rep.name,
                available=availability.get(rep.id, rep.available),
                on_duty=rep.on_duty(pool.now_s),
                open_leads=loads.get(rep.id, 0),
                capacity=rep.capacity,
                assigned_total=totals.get(rep.id, 0),
                skip_reason=skip_reason(rep, pool),
            )
            for rep in self.roster.reps
        ]
