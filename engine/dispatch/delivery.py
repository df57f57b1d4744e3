"""One action's way through the delivery policies to its connector, ending in exactly one `Outcome`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from connectors.base import Connector, DeliveryError, PermanentError, RetryableError, SkipDelivery
from connectors.context import LeadView
from engine.core.model import Action
from engine.dispatch.policies.caps import FrequencyCaps
from engine.dispatch.policies.circuit import CircuitBreaker, CircuitState
from engine.dispatch.policies.consent import consent_block_reason
from engine.dispatch.policies.idempotency import ClaimStatus, IdempotencyStore
from engine.dispatch.policies.quiet_hours import QuietHours
from engine.dispatch.policies.retry import RetryPolicy
from engine.dispatch.schedule import Schedule, ScheduledDelivery
from engine.metrics import CONNECTOR_INFLIGHT

FINAL_OUTCOMES = frozenset({"sent", "failed", "suppressed", "duplicate"})
Hook = Callable[[Action], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one action this time. `attempt`: send attempts made so far, this one included."""

    outcome: str
    reason: str = ""
    attempt: int = 0
    detail: str = ""
    latency_ms: int | None = None
    next_attempt_ms: int | None = None
    dead_letter: bool = False

    @property
    def final(self) -> bool:
        return self.outcome in FINAL_OUTCOMES


@dataclass(frozen=True)
class Job:
    """One delivery attempt's input: the action, sends tried so far, whether it came from the schedule (its
    entry may then be replaced) or from Kafka, and when the worker emitted it (wall clock, for the delay)."""

    action: Action
    attempts: int = 0
    from_schedule: bool = False
    emitted_ms: int = 0


@dataclass
class ConnectorRuntime:
    """A started connector with its own slot limit, breaker and retry policy."""

    connector: Connector
    retry: RetryPolicy
    breaker: CircuitBreaker
    obeys_consent: bool
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.connector.config.concurrency)

    @property
    def name(self) -> str:
        return self.connector.name


@dataclass
class DeliveryHooks:
    """Test seams for crash-consistency tests: awaited right after the claim and right after the send."""

    after_claim: Hook | None = None
    after_send: Hook | None = None


class Deliverer:
    """Runs one `Job` through the delivery policies and its connector (`deliver`). Safe to call concurrently.

    Order, and why:
    1. Unknown connector name → `failed` (dead letter): the connectors file and the rules disagree.
    2. Circuit open → the attempt fails fast (`circuit_open`, counts against the retry budget) and is
       rescheduled: a dead peer costs no timeouts and cannot hold slots other connectors need.
    3. Inside the connector's concurrency slot (so a claim never ages while it waits for a slot): claim the action
       id in Redis. `done` → `duplicate`; held by someone else (in flight elsewhere, or a crashed attempt) →
       recheck when the claim expires (`deferred`, reason `claim_held`).
    4. Consent (marketing actions on connectors that obey it) → `suppressed` with the reason.
    5. Quiet hours in the lead's timezone, then frequency caps → `deferred` to the next allowed time, or
       `suppressed` (`quiet_hours_drop` / `frequency_cap_drop`) when the rule says `on_cap: drop`.
    6. Send. Accepted → mark done → `sent`. Retryable failure → `retried` with the next attempt time (backoff,
       jitter, Retry-After), or `failed` + dead letter once `retry.max_attempts` is spent. Permanent failure →
       `failed` + dead letter. `SkipDelivery` → `suppressed`.

    Idempotent per action id: a redelivered or replayed action is sent at most once while its `done` mark lives
    (and at-least-once to the peer after a crash between send and mark). A cap slot is given back when the
    action ends unsent.
    """

    def __init__(
        self,
        connectors: dict[str, ConnectorRuntime],
        idempotency: IdempotencyStore,
        caps: FrequencyCaps,
        quiet_hours: QuietHours | None,
        schedule: Schedule,
        require_explicit_consent: bool = False,
        hooks: DeliveryHooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connectors = connectors
        self.idempotency = idempotency
        self.caps = caps
        self.quiet_hours = quiet_hours
        self.schedule = schedule
        self.require_explicit_consent = require_explicit_consent
        self.hooks = hooks or DeliveryHooks()
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def deliver(self, job: Job) -> Outcome:
        """The outcome of this attempt. Everything that waits (deferred, retried, held) is written to the durable
        `Schedule` before the outcome is returned, so the caller may then commit the Kafka offset. Blocks while
        the connector's slots are taken and for the send (bounded by the connector's `timeout_s` + 5 s). Never
        raises for a problem with the action or the peer (a connector bug counts as a retryable failure); raises
        when Redis itself fails, and the caller retries the whole action later. Cancellation leaves the claim to
        expire, as a crash would."""
        action = job.action
        runtime = self.connectors.get(action.connector)
        if runtime is None:
            known = ", ".join(sorted(self.connectors)) or "none"
            detail = f"no connector named {action.connector!r} in the connectors file (configured: {known})"
            return Outcome("failed", "unknown_connector", job.attempts, detail, dead_letter=True)
        if runtime.breaker.state is CircuitState.OPEN:
            error = RetryableError(
                "circuit_open", f"circuit of {runtime.name} is open after repeated failures"
            )
            return await self._attempt_failed(runtime, job, error)
        async with runtime.slots:
            return await self._deliver_in_slot(runtime, job)

    async def _deliver_in_slot(self, runtime: ConnectorRuntime, job: Job) -> Outcome:
        action, attempts = job.action, job.attempts
        claim = await self.idempotency.claim(action.action_id)
        if claim.status is ClaimStatus.DONE:
            return Outcome("duplicate", "already_sent", attempts)
        if claim.status is ClaimStatus.HELD:
            return await self._wait(job, self.now_ms() + claim.held_for_ms + 50, "held", "claim_held")
        token = claim.token
        release_claim = True  # False once sent (the claim becomes `done`) or when cancelled like a crash
        try:
            if self.hooks.after_claim:
                await self.hooks.after_claim(action)
            held_back = await self._policies(runtime, job)
            if held_back is not None:
                return held_back
            if not runtime.breaker.allow():
                error = RetryableError("circuit_open", f"circuit of {runtime.name} is open")
                return await self._attempt_failed(runtime, job, error)
            started = time.monotonic()
            CONNECTOR_INFLIGHT.labels(connector=runtime.name).inc()
            try:
                # The connector enforces its own timeout; this one is the backstop for a connector that hangs.
                await asyncio.wait_for(runtime.connector.send(action), runtime.connector.config.timeout_s + 5)
            finally:
                CONNECTOR_INFLIGHT.labels(connector=runtime.name).dec()
            latency_ms = int((time.monotonic() - started) * 1000)
            release_claim = False
            if self.hooks.after_send:
                await self.hooks.after_send(action)
            await self.idempotency.mark_done(action.action_id)
            runtime.breaker.record_success()
            return Outcome("sent", "", attempts + 1, latency_ms=latency_ms)
        except asyncio.CancelledError:
            # Shutdown or a crash: leave the claim to expire, exactly as a killed process would.
            release_claim = False
            raise
        except SkipDelivery as exc:
            runtime.breaker.release()
            await self.caps.release(action, runtime.name)
            return Outcome("suppressed", exc.reason, attempts, exc.detail)  # nothing went to the peer
        except PermanentError as exc:
            runtime.breaker.release()
            await self.caps.release(action, runtime.name)
            return Outcome("failed", exc.reason, attempts + 1, exc.detail, dead_letter=True)
        except DeliveryError as exc:
            return await self._attempt_failed(runtime, job, exc)
        except TimeoutError:
            error = RetryableError("timeout", "the connector did not return in time")
            return await self._attempt_failed(runtime, job, error)
        except Exception as exc:  # a connector bug must not lose the action: retry it like a peer failure
            error = RetryableError("connector_error", f"{type(exc).__name__}: {exc}")
            return await self._attempt_failed(runtime, job, error)
        finally:
            if release_claim:
                await self.idempotency.release(action.action_id, token)

    async def _policies(self, runtime: ConnectorRuntime, job: Job) -> Outcome | None:
        """Consent, quiet hours and caps: an outcome when the action must not go now, else None."""
        action = job.action
        view = LeadView(action)
        if runtime.obeys_consent:
            reason = consent_block_reason(view, self.require_explicit_consent)
            if reason:
                return Outcome("suppressed", reason, job.attempts, "marketing message without consent")
        now = self.now_ms()
        if self.quiet_hours is not None and self.quiet_hours.applies(runtime.name, action.marketing):
            allowed_at = self.quiet_hours.next_allowed_ms(now, view.timezone)
            if allowed_at is not None:
                return await self._hold_back(job, allowed_at, "quiet_hours")
        free_at = await self.caps.reserve(action, runtime.name, now)
        if free_at is not None:
            return await self._hold_back(job, free_at, "frequency_cap")
        return None

    async def _hold_back(self, job: Job, due_ms: int, reason: str) -> Outcome:
        if job.action.on_cap == "drop":
            return Outcome("suppressed", f"{reason}_drop", job.attempts, "the rule says on_cap: drop")
        return await self._wait(job, due_ms, "deferred", reason)

    async def _wait(self, job: Job, due_ms: int, why: str, reason: str) -> Outcome:
        entry = ScheduledDelivery(job.action, job.attempts, why, reason, due_ms, job.emitted_ms)
        if not await self.schedule.put(entry, only_if_absent=not job.from_schedule):
            return Outcome("duplicate", "already_scheduled", job.attempts)
        return Outcome("deferred", reason, job.attempts, next_attempt_ms=due_ms)

    async def _attempt_failed(self, runtime: ConnectorRuntime, job: Job, error: DeliveryError) -> Outcome:
        attempt = job.attempts + 1
        if error.reason != "circuit_open":
            runtime.breaker.record_failure()
        retry_after = error.retry_after_s if isinstance(error, RetryableError) else None
        delay_s = runtime.retry.next_delay_s(attempt, retry_after)
        if error.reason == "circuit_open" and delay_s is not None:
            delay_s = max(delay_s, runtime.breaker.retry_in_s())
        if delay_s is None:
            await self.caps.release(job.action, runtime.name)
            detail = f"gave up after {attempt} attempts; last error {error.reason}: {error.detail}"
            return Outcome("failed", "retries_exhausted", attempt, detail, dead_letter=True)
        due = self.now_ms() + int(delay_s * 1000)
        # From Kafka (a redelivery after a crash), an existing entry keeps its own, higher attempt count.
        entry = ScheduledDelivery(job.action, attempt, "retry", error.reason, due, job.emitted_ms)
        await self.schedule.put(entry, only_if_absent=not job.from_schedule)
        return Outcome("retried", error.reason, attempt, error.detail, next_attempt_ms=due)
