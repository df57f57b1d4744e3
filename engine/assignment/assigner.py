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
from engine.assignment.links import RepLinks
from engine.assignment.model import Assignment, QueuedLead, SlaBreach
from engine.assignment.roster import Rep, Roster
from engine.assignment.store import PREFIX, AssignmentStore, QueueItem, ReleaseResult, StoreSnapshot
from engine.assignment.strategies import Choice, PoolSnapshot, choose, skip_reason


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
class PassResult:
    """What a pass did: "moved" (to `assignment`), "queued" (nobody else free: `queued`), "not_owner" or
    "unknown" (the lead has no owner)."""

    status: str
    assignment: Assignment | None = None
    queued: QueuedLead | None = None


@dataclass(frozen=True)
class OwnedLead:
    """A lead a rep owns, for the inbox: the assignment and the lead as stored with it (traits, score, stage,
    recent events, explanation of the alert)."""

    assignment: Assignment
    lead: dict[str, Any]


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
    """Owns, queues, acknowledges, moves and releases hot leads for the dispatcher, the HTTP endpoints, the inbox
    and the CLI.

    Idempotency: `assign(lead_id, lead)` and `assign_or_queue` are idempotent per lead: the first call anywhere (any
    process) picks a rep and stores it (or queues the lead); every later call returns that owner with
    `created=False` (or the queue position). `release`, `ack` and `drain_queue` may be repeated.

    Concurrency: each choice is made by the pure `strategies.choose` on a snapshot and committed by a Lua script
    that rejects stale snapshots (`AssignmentStore.commit`); on rejection the assigner re-reads and chooses again,
    at most `max_attempts` times, then raises `AssignmentContention`. Calls within one `Assigner` are serialised
    (one lock) so a process does not compete with itself; throughput is a few thousand assignments per second, far
    above any hot-lead rate. Redis errors propagate.

    Queue: `assign_or_queue` gives the lead a rep only when one is eligible *and* no other lead waits; otherwise the
    lead joins the queue (ordered by priority, then score, then arrival) and `drain_queue` (run by `nudge reps
    serve` whenever capacity frees, and every pass) assigns waiting leads in that order. The SLA clock of a queued
    lead starts when it is assigned. `assign` ignores the queue (it is the plain "owner now or None" call).

    Time: `clock()` returns epoch seconds (default `time.time`): working hours, assignment times, queue times and
    SLA deadlines all use it, so tests control time by passing their own clock.

    SLA: the deadline is `assigned_at + roster.sla.ack_within_s`; `ack` stops it; `due_sla_breaches` lists leads
    past it; `reassign` moves a lead to another rep (previous owners are tried last). Notifications are built by
    `SlaMonitor` / `QueueWatch` / `notifications`, never sent from here. Every change lands in the lead's history
    and in the store's outbox (`relay.ChangeRelay` publishes it to `lead-updates`), in the same Lua step.

    Links: with `links` (a `RepLinks`), every `Assignment` returned carries the signed ack/pass links of its rep.
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
        links: RepLinks | None = None,
    ) -> None:
        self.roster = roster
        self.strategy = strategy or roster.strategy
        self.clock = clock
        self.store = AssignmentStore(redis, prefix)
        self.max_attempts = max_attempts
        self.links = links
        self._lock = asyncio.Lock()
        self.retries = 0  # commits rejected as stale (also counted in nudge_assignment_retries_total)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _deadline(self, now_ms: int) -> int:
        return now_ms + int(self.roster.sla.ack_within_s * 1000)

    def _links(self, lead_id: str, rep_id: str) -> dict[str, str] | None:
        return self.links.for_assignment(lead_id, rep_id) if self.links else None

    def _from_owner(self, lead_id: str, owner: Mapping[str, str], created: bool) -> Assignment:
        rep = self.roster.rep(owner["rep"])
        deadline = owner.get("sla_deadline_ms")
        acked = owner.get("acked_at_ms")
        waited = owner.get("waited_ms")
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
            waited_ms=int(waited) if waited else None,
            links=self._links(lead_id, owner["rep"]),
        )

    def _choose(
        self, lead_id: str, lead: Mapping[str, Any], pool: PoolSnapshot, tried: list[str], previous: str | None
    ) -> Choice | None:
        choice = choose(self.strategy, self.roster, pool, lead_id, lead, exclude=tried)
        if choice is None and tried:
            # everybody was tried: any rep but the current owner (a reassignment) or the last to pass it (queue)
            last = previous or tried[-1]
            choice = choose(self.strategy, self.roster, pool, lead_id, lead, exclude=[last])
        return choice

    async def _place(
        self,
        lead_id: str,
        lead: Mapping[str, Any],
        *,
        previous: str | None,
        reason: str,
        by: str,
        breached_deadline_ms: int | None = None,
        queue_mode: str = "",
        named: Rep | None = None,
        force: bool = False,
    ) -> tuple[Assignment | None, str]:
        """(the assignment made or found, "ok" | "owned") or (None, why): "nobody" eligible, "passed" (a queued
        lead: the free reps are all ones that passed it), "moved" (the
        premise of a reassignment no longer holds), "gone" (no longer queued), "queued" (waiting already),
        "queue_busy" (other leads wait), "away" / "full" (a named rep, not forced)."""
        for attempt in range(self.max_attempts):
            snap: StoreSnapshot = await self.store.snapshot(lead_id)
            if previous is None and snap.owner.get("rep"):
                metrics.ASSIGNMENTS.labels("existing").inc()
                return self._from_owner(lead_id, snap.owner, created=False), "owned"
            if previous is not None and snap.owner.get("rep") != previous:
                return None, "moved"  # released or moved by someone else meanwhile
            if breached_deadline_ms is not None and (
                snap.owner.get("acked_at_ms")
                or snap.owner.get("sla_deadline_ms") != str(breached_deadline_ms)
            ):
                return None, "moved"  # acknowledged, or the SLA clock was restarted, since the breach was seen
            if queue_mode == "from_queue" and not snap.queued:
                return None, "gone"
            if queue_mode == "respect" and snap.queued:
                return None, "queued"
            now_s = self.clock()
            now_ms = int(now_s * 1000)
            pool = PoolSnapshot(now_s, snap.loads, snap.availability, snap.cursors)
            source = snap.owner if previous is not None else snap.queued
            tried = [r for r in source.get("tried", "").split(",") if r]
            choice = Choice(named, "named", None) if named else self._choose(lead_id, lead, pool, tried, previous)
            if choice is None:
                if queue_mode == "":
                    metrics.ASSIGNMENTS.labels("unassigned").inc()
                unpassed = choose(self.strategy, self.roster, pool, lead_id, lead) if tried else None
                if queue_mode == "from_queue" and unpassed is not None:
                    return None, "passed"  # a rep is free, but only ones this lead was passed by
                return None, "nobody"
            deadline = self._deadline(now_ms)
            kind = "reassigned" if previous else "assigned"
            entry: dict[str, Any] = {
                "at_ms": now_ms, "event": kind, "rep": choice.rep.id, "strategy": choice.strategy, "by": by,
            }  # fmt: skip
            if previous:
                entry |= {"previous_rep": previous, "reason": reason}
            fields: dict[str, Any] = {
                "rep": choice.rep.id,
                "strategy": choice.strategy,
                "assigned_at_ms": now_ms,
                "lead": orjson.dumps(dict(lead), default=str),
            }
            waited_ms = None
            if queue_mode == "from_queue":
                waited_ms = max(0, now_ms - int(snap.queued.get("queued_at_ms") or now_ms))
                entry["waited_ms"] = fields["waited_ms"] = waited_ms
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
                fields=fields,
                queue_mode=queue_mode,
                force=force,
            )
            if result.status == "ok":
                metrics.ASSIGNMENTS.labels(kind).inc()
                rep = choice.rep
                return Assignment(
                    lead_id=lead_id, rep_id=rep.id, name=rep.name, email=rep.email, slack_id=rep.slack_id,
                    strategy=choice.strategy, assigned_at_ms=now_ms, sla_deadline_ms=deadline, created=True,
                    previous_rep_id=previous, reassignments=int(result.detail or 0), waited_ms=waited_ms,
                    links=self._links(lead_id, rep.id),
                ), "ok"  # fmt: skip
            if result.status == "moved":
                return None, "moved"  # a reassignment whose premise no longer holds (see store.commit)
            if result.status in ("gone", "queued", "queue_busy"):
                return None, result.status
            if result.status == "owned":
                continue  # the next snapshot shows the owner and returns it
            if named is not None and result.detail in ("away", "full"):
                return None, result.detail
            # conflict: another process changed what this choice relied on; back off a little, then re-read
            self.retries += 1
            metrics.ASSIGNMENT_RETRIES.inc()
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise AssignmentContention(f"could not assign lead {lead_id!r} in {self.max_attempts} attempts")

    async def assign(self, lead_id: str, lead: Mapping[str, Any] | None = None) -> Assignment | None:
        """The lead's owner, assigning one when it has none; None when no rep is eligible right now (everybody
        away, off hours or full): nothing is stored then and the caller may retry later. `lead` is the lead as
        the action context carries it (traits: email, name, company, country/territory, segment; score; stage);
        it is stored with the owner so a reassignment can use the same traits. Ignores the queue: the hot-lead
        flow uses `assign_or_queue`.
        """
        async with self._lock:
            assignment, _ = await self._place(lead_id, lead or {}, previous=None, reason="", by="api")
            return assignment

    async def assign_or_queue(
        self, lead_id: str, lead: Mapping[str, Any] | None = None, *, by: str = "dispatcher"
    ) -> Assignment | QueuedLead:
        """The lead's owner (existing, or assigned now), or its place in the queue when no rep can take it now or
        other leads wait already (so nobody jumps the queue). Idempotent: a waiting lead keeps its place
        (`created=False`). The queue orders by `lead["priority"]` (the alert's priority), then `lead["score"]`,
        then arrival."""
        lead = dict(lead or {})
        async with self._lock:
            for _ in range(3):
                assignment, why = await self._place(
                    lead_id, lead, previous=None, reason="", by=by, queue_mode="respect"
                )
                if assignment is not None:
                    if assignment.created:
                        metrics.ASSIGNMENT_WAIT.observe(0)
                    return assignment
                now_ms = self.now_ms()
                because = "other leads are waiting" if why == "queue_busy" else "no eligible rep has capacity"
                priority, score = _number(lead.get("priority")), _number(lead.get("score"))
                result = await self.store.enqueue(
                    lead_id, queued_at_ms=now_ms, priority=int(priority), score=score, lead=lead, reason=because,
                    entry={"at_ms": now_ms, "event": "queued", "by": by, "reason": because,
                           "priority": priority, "score": score},
                )  # fmt: skip
                if result.status == "owned":
                    continue  # assigned by another process meanwhile: the next round returns the owner
                if result.status == "queued":
                    metrics.ASSIGNMENTS.labels("queued").inc()
                return QueuedLead(lead_id, result.position, result.queued_at_ms, created=result.status == "queued")
        raise AssignmentContention(f"lead {lead_id!r} kept changing between queue and owner")

    async def drain_queue(self, limit: int = 100, by: str = "queue") -> list[Assignment]:
        """Assign waiting leads in queue order while reps have capacity; the assignments made here (each a fresh
        owner with a fresh SLA clock and `waited_ms`). A lead whose only free reps already passed it is skipped
        for now; the drain stops at the first lead nobody can take. Safe to run from several processes at once:
        each lead leaves the queue in the same Lua step that gives it an owner."""
        done: list[Assignment] = []
        async with self._lock:
            for item in await self.store.queue_items(limit):
                assignment, why = await self._place(
                    item.lead_id, item.lead, previous=None, reason="", by=by, queue_mode="from_queue"
                )
                if assignment is not None and assignment.created:
                    metrics.ASSIGNMENT_WAIT.observe((assignment.waited_ms or 0) / 1000)
                    done.append(assignment)
                elif why == "nobody":
                    # Nobody was free when this lead was checked. Stop here even if a slot has freed since: a later
                    # lead must not take it ahead of this one; whoever freed it woke the next drain, which starts
                    # again at the head of the queue.
                    break
        return done

    async def queue(self, limit: int = 100) -> list[QueueItem]:
        return await self.store.queue_items(limit)

    async def queue_alerts_due(self, limit: int = 100) -> list[QueueItem]:
        """Leads that have waited longer than `sla.queue_alert_after` and whose alert nobody sent yet; each is
        returned once across all processes (the caller sends the team-channel alert)."""
        after_s = self.roster.sla.queue_alert_after_s
        if after_s is None:
            return []
        now_ms = self.now_ms()
        due = []
        for lead_id in await self.store.queued_since(now_ms - int(after_s * 1000), limit):
            if await self.store.mark_alerted(lead_id, now_ms):
                item = await self.store.queued(lead_id)
                if item is not None:
                    due.append(item)
        return due

    async def queue_stats(self) -> tuple[int, float]:
        """(leads waiting, seconds the longest-waiting one has waited)."""
        length, oldest = await self.store.queue_length(), await self.store.oldest_queued_ms()
        return length, 0.0 if oldest is None else max(0.0, (self.now_ms() - oldest) / 1000)

    async def owner(self, lead_id: str) -> Assignment | None:
        owner = await self.store.owner(lead_id)
        return self._from_owner(lead_id, owner, created=False) if owner.get("rep") else None

    async def lead_of(self, lead_id: str) -> dict[str, Any]:
        """The lead context stored with the owner (empty when the lead has no owner)."""
        raw = (await self.store.owner(lead_id)).get("lead")
        return orjson.loads(raw) if raw else {}

    async def leads_of(self, rep_id: str) -> list[OwnedLead]:
        """The leads `rep_id` owns now, with their stored context (unordered)."""
        lead_ids = await self.store.leads_of(rep_id)
        owned = []
        for lead_id, owner in zip(lead_ids, await self.store.owned_leads(lead_ids), strict=True):
            if owner.get("rep") == rep_id:
                lead = orjson.loads(owner["lead"]) if owner.get("lead") else {}
                owned.append(OwnedLead(self._from_owner(lead_id, owner, created=False), lead))
        return owned

    async def ack_detail(self, lead_id: str, rep_id: str | None = None, by: str = "api") -> AckResult:
        """Acknowledge as `rep_id` (None: whoever owns it). Only the current owner can acknowledge."""
        now_ms = self.now_ms()
        entry: dict[str, Any] = {"at_ms": now_ms, "event": "acked", "by": by}
        if rep_id:
            entry["rep"] = rep_id
        status, owner = await self.store.ack(lead_id, rep_id, now_ms, entry)
        if status == "ok":
            metrics.ASSIGNMENT_CHANGES.labels("acked").inc()
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
        by: str = "sla",
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
            assignment, _ = await self._place(
                lead_id,
                lead,
                previous=current,
                reason=reason,
                by=by,
                breached_deadline_ms=breach.deadline_ms if breach else None,
            )
            return assignment

    async def reassign_to(
        self, lead_id: str, rep_id: str, *, by: str = "cli", force: bool = False
    ) -> tuple[Assignment | None, str]:
        """Give the lead (owned, or waiting in the queue) to the named rep, whatever the strategy: (the new
        assignment, "ok"), or (None | current owner, why): "same" (the rep owns it already), "unknown" (the lead
        is neither owned nor waiting), "away" / "full" (the rep cannot take it now; `force` skips both checks),
        "moved" (it changed meanwhile: retry). Raises `UnknownRep` for a rep id not in the roster."""
        rep = self.roster.rep(rep_id)
        if rep is None:
            raise UnknownRep(rep_id)
        snap = await self.store.snapshot(lead_id)
        current = snap.owner.get("rep")
        if current == rep_id:
            return self._from_owner(lead_id, snap.owner, created=False), "same"
        if not current and not snap.queued:
            return None, "unknown"
        raw = (snap.owner if current else snap.queued).get("lead")
        lead = orjson.loads(raw) if raw else {}
        async with self._lock:
            assignment, why = await self._place(
                lead_id, lead, previous=current or None, reason="named", by=by,
                queue_mode="" if current else "from_queue", named=rep, force=force,
            )  # fmt: skip
        if assignment is not None and assignment.created:
            metrics.ASSIGNMENT_CHANGES.labels("reassigned").inc()
            if assignment.waited_ms is not None:
                metrics.ASSIGNMENT_WAIT.observe(assignment.waited_ms / 1000)
        return assignment, why if assignment is None else "ok"

    async def pass_lead(self, lead_id: str, rep_id: str, *, by: str = "api") -> PassResult:
        """The owner gives the lead away: it moves to another eligible rep (never back to `rep_id`), or, when
        nobody else can take it now, back to the queue (the rep's slot is free either way)."""
        owner = await self.store.owner(lead_id)
        if not owner.get("rep"):
            return PassResult("unknown")
        if owner["rep"] != rep_id:
            return PassResult("not_owner")
        lead = orjson.loads(owner["lead"]) if owner.get("lead") else {}
        async with self._lock:
            assignment, why = await self._place(lead_id, lead, previous=rep_id, reason="passed", by=by)
            if assignment is not None:
                metrics.ASSIGNMENT_CHANGES.labels("passed").inc()
                return PassResult("moved", assignment=assignment)
            if why == "moved":
                return PassResult("not_owner")
            now_ms = self.now_ms()
            tried = tuple(r for r in owner.get("tried", "").split(",") if r)
            priority, score = _number(lead.get("priority")), _number(lead.get("score"))
            because = "passed; no other rep has capacity"
            result = await self.store.enqueue(
                lead_id, queued_at_ms=now_ms, priority=int(priority), score=score, lead=lead, tried=tried,
                reason=because, passing_rep=rep_id,
                entry={"at_ms": now_ms, "event": "passed", "rep": rep_id, "by": by, "reason": because},
            )  # fmt: skip
        if result.status != "queued":
            return PassResult("not_owner")
        metrics.ASSIGNMENT_CHANGES.labels("passed").inc()
        return PassResult("queued", queued=QueuedLead(lead_id, result.position, result.queued_at_ms))

    async def set_deadline(self, lead_id: str, rep_id: str, deadline_ms: int | None, event: str) -> bool:
        entry = {"at_ms": self.now_ms(), "event": event, "rep": rep_id, "deadline_ms": deadline_ms, "by": "sla"}
        return await self.store.set_deadline(lead_id, rep_id, deadline_ms, entry)

    async def release(
        self,
        lead_id: str,
        *,
        reason: str = "",
        by: str = "dispatcher",
        expected_rep: str | None = None,
        not_after_ms: int | None = None,
    ) -> ReleaseResult:
        """Free the lead's owner (its capacity comes back, the SLA clock stops), or take it out of the queue when
        it was waiting (not with `expected_rep`). See `AssignmentStore.release` for `expected_rep` and
        `not_after_ms`. Idempotent: a lead with neither gives status "none"."""
        now_ms = self.now_ms()
        entry = {"at_ms": now_ms, "event": "released", "by": by, "reason": reason}
        result = await self.store.release(
            lead_id,
            entry,
            expected_rep=expected_rep,
            dequeued_entry={**entry, "event": "dequeued"},
            not_after_ms=not_after_ms,
        )
        if result.status in ("released", "dequeued"):
            metrics.ASSIGNMENT_CHANGES.labels("released").inc()
        return result

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


def _number(value: Any) -> float:
    """A priority or score from the lead context (`{"value": 80}` too); 0 when there is none."""
    if isinstance(value, dict):
        value = value.get("value", value.get("score"))
    if isinstance(value, bool):
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number == number and abs(number) != float("inf") else 0.0
