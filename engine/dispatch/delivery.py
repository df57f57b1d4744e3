"""One action's way through the delivery policies to its connector, ending in exactly one `Outcome`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.base import BadMessage, Connector, DeliveryError, PermanentError, RetryableError, SkipDelivery
from connectors.context import LeadView
from engine.core.model import Action
from engine.dispatch.policies.caps import FrequencyCaps
from engine.dispatch.policies.circuit import CircuitBreaker, CircuitState
from engine.dispatch.policies.consent import consent_block_reason
from engine.dispatch.policies.idempotency import ClaimStatus, IdempotencyStore
from engine.dispatch.policies.quiet_hours import QuietHours
from engine.dispatch.policies.recheck import LeadSituation, RecheckState, expired, recheck_reason
from engine.dispatch.policies.retry import RetryPolicy
from engine.dispatch.schedule import Schedule, ScheduledDelivery
from engine.metrics import CONNECTOR_INFLIGHT

FINAL_OUTCOMES = frozenset({"sent", "failed", "suppressed", "duplicate", "held_out"})
HELD_OUT = "held_out"  # an experiment's holdout arm (Action.held_out): recorded, never sent
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
    entry may then be replaced) or from Kafka, when the worker emitted it (wall clock, for the delay), and when
    the action expires (`expires_at_ms`, epoch ms; None: never)."""

    action: Action
    attempts: int = 0
    from_schedule: bool = False
    emitted_ms: int = 0
    expires_at_ms: int | None = None


@dataclass
class ConnectorRuntime:
    """A started connector with its own slot limit, breaker and retry policy."""

    connector: Connector[Any]
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
    0. An experiment's holdout action (`Action.held_out`) → `held_out` (reason `holdout`), before everything
       else: no claim, no policy, no cap slot, no connector, whatever the connector's state. The holdout arm is
       the control group: it must be recorded exactly like the others and never reach anyone.
    1. Unknown connector name → `failed` (dead letter): the connectors file and the rules disagree.
    2. Circuit open → no attempt: the action is rescheduled for when the breaker lets a probe through
       (`deferred`, reason `circuit_open`) and keeps its whole retry budget: a dead peer costs no timeouts, holds
       no slots other connectors need, and an outage of any length dead-letters nothing by itself.
    3. Inside the connector's concurrency slot (so a claim never ages while it waits for a slot): claim the action
       id in Redis. `done` → `duplicate`; held by someone else (in flight elsewhere, or a crashed attempt) →
       recheck when the claim expires (`deferred`, reason `claim_held`).
    4. The re-check on the lead's current situation, on the first attempt and on every later one from the
       schedule (`policies.recheck`): past `expires_at_ms` → `suppressed`/`expired` (no I/O); then one Redis read
       of the lead's re-check state: converted for this rule after the action fired → `suppressed`/`converted`;
       for marketing actions on connectors that obey consent, consent withdrawn now (or in the snapshot the
       action carries) → `suppressed`/`unsubscribed` or `consent_withdrawn` (`no_consent_recorded` under
       `require_explicit`).
    5. Quiet hours in the lead's timezone, then frequency caps (per lead, and per recipient address for the
       connector's `recipient_address`) → `deferred` to the next allowed time, or `suppressed`
       (`quiet_hours_drop` / `frequency_cap_drop`) when the rule says `on_cap: drop`.
    6. Build the message (`Connector.build`: rendering, headers). `SkipDelivery` → `suppressed`; anything else
       that goes wrong → `failed` + dead letter with its own reason (`bad_message`, `template_error`), at once:
       the action is wrong, not the peer, so the breaker never hears of it.
    7. Ask the breaker (`allow()`; half-open lets one probe through); refused → as in 2.
    8. Transmit, one real attempt. Accepted → mark done → `sent`. `RetryableError` (a peer or transport failure:
       the only kind the breaker counts) → `retried` with the next attempt time (backoff, jitter, Retry-After), or
       `failed` + dead letter (`retries_exhausted`) once `retry.max_attempts` real attempts are spent.
       `PermanentError` → `failed` + dead letter. Any other exception (a connector bug) is retried like a peer
       failure but not counted by the breaker.

    `Outcome.attempt` counts real attempts only (transmits that reached for the peer), never refusals.
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
        recheck: RecheckState | None = None,
    ) -> None:
        self.connectors = connectors
        self.idempotency = idempotency
        self.caps = caps
        self.quiet_hours = quiet_hours
        self.schedule = schedule
        self.recheck = recheck
        self.require_explicit_consent = require_explicit_consent
        self.hooks = hooks or DeliveryHooks()
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def deliver(self, job: Job) -> Outcome:
        """The outcome of this attempt. Everything that waits (deferred, retried, held, refused by the breaker) is
        written to the durable `Schedule` before the outcome is returned, so the caller may then commit the Kafka
        offset. Blocks while the connector's slots are taken and for the send (bounded by the connector's
        `timeout_s` + 5 s). Never raises for a problem with the action or the peer; raises when Redis itself
        fails, and the caller retries the whole action later. Cancellation leaves the claim to expire, as a crash
        would."""
        action = job.action
        if action.held_out:
            return Outcome(HELD_OUT, "holdout", job.attempts)
        runtime = self.connectors.get(action.connector)
        if runtime is None:
            known = ", ".join(sorted(self.connectors)) or "none"
            detail = f"no connector named {action.connector!r} in the connectors file (configured: {known})"
            return Outcome("failed", "unknown_connector", job.attempts, detail, dead_letter=True)
        if runtime.breaker.state is CircuitState.OPEN:
            return await self._refused(runtime, job)  # fail fast: no slot, no claim, no attempt spent
        async with runtime.slots:
            return await self._deliver_in_slot(runtime, job)

    async def _deliver_in_slot(self, runtime: ConnectorRuntime, job: Job) -> Outcome:
        action, attempts = job.action, job.attempts
        claim = await self.idempotency.claim(action.action_id)
        if claim.status is ClaimStatus.DONE:
            return Outcome("duplicate", "already_sent", attempts)
        if claim.status is ClaimStatus.HELD:
            return await self._wait(job, self.now_ms() + claim.held_for_ms + 50, "held", "claim_held")
        release_claim = True  # False once sent (the claim becomes `done`) or when cancelled like a crash
        try:
            if self.hooks.after_claim:
                await self.hooks.after_claim(action)
            held_back = await self._policies(runtime, job)
            if held_back is not None:
                return held_back
            built = await self._build(runtime, job)
            if isinstance(built, Outcome):
                return built
            if not runtime.breaker.allow():
                return await self._refused(runtime, job)
            sent = await self._transmit(runtime, job, built)
            if sent.outcome != "sent":
                return sent
            release_claim = False
            if self.hooks.after_send:
                await self.hooks.after_send(action)
            await self.idempotency.mark_done(action.action_id)
            return sent
        except asyncio.CancelledError:
            # Shutdown or a crash: leave the claim to expire, exactly as a killed process would.
            release_claim = False
            raise
        finally:
            if release_claim:
                await self.idempotency.release(action.action_id, claim.token)

    async def _build(self, runtime: ConnectorRuntime, job: Job) -> Any:
        """The connector's message, or the final `Outcome` when there is nothing (valid) to send. No I/O to the
        peer, and no verdict on it: the breaker is not involved."""
        action = job.action
        try:
            return runtime.connector.build(action)
        except SkipDelivery as exc:
            await self._release_caps(runtime, action)
            return Outcome("suppressed", exc.reason, job.attempts, exc.detail)
        except PermanentError as exc:  # BadMessage, template_error, unknown_template, ...
            await self._release_caps(runtime, action)
            return Outcome("failed", exc.reason, job.attempts, exc.detail, dead_letter=True)
        except Exception as exc:  # whatever else the build trips on, the action's data is to blame
            await self._release_caps(runtime, action)
            error = BadMessage(f"{type(exc).__name__}: {exc}"[:300])
            return Outcome("failed", error.reason, job.attempts, error.detail, dead_letter=True)

    async def _transmit(self, runtime: ConnectorRuntime, job: Job, message: Any) -> Outcome:
        """One real attempt at the peer (the breaker allowed it): `sent`, or the failure's outcome. The breaker
        hears the verdict: success, a peer failure (`RetryableError`, a timeout) or nothing about the peer."""
        action = job.action
        attempt = job.attempts + 1
        started = time.monotonic()
        CONNECTOR_INFLIGHT.labels(connector=runtime.name).inc()
        try:
            # The connector enforces its own timeout; this one is the backstop for a connector that hangs.
            await asyncio.wait_for(runtime.connector.transmit(message), runtime.connector.config.timeout_s + 5)
        except RetryableError as exc:
            runtime.breaker.record_failure()
            return await self._retry_or_give_up(runtime, job, exc)
        except TimeoutError:
            runtime.breaker.record_failure()
            error = RetryableError("timeout", "the connector did not return in time")
            return await self._retry_or_give_up(runtime, job, error)
        except SkipDelivery as exc:
            runtime.breaker.release()
            await self._release_caps(runtime, action)
            return Outcome("suppressed", exc.reason, job.attempts, exc.detail)
        except PermanentError as exc:  # the peer refused this message for good: it is up, and says so
            runtime.breaker.release()
            await self._release_caps(runtime, action)
            return Outcome("failed", exc.reason, attempt, exc.detail, dead_letter=True)
        except DeliveryError as exc:  # a subclass of neither kind: retry it, say nothing about the peer
            runtime.breaker.release()
            return await self._retry_or_give_up(runtime, job, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a connector bug must not lose the action, nor open the circuit for everyone
            runtime.breaker.release()
            error = RetryableError("connector_error", f"{type(exc).__name__}: {exc}")
            return await self._retry_or_give_up(runtime, job, error)
        finally:
            CONNECTOR_INFLIGHT.labels(connector=runtime.name).dec()
        runtime.breaker.record_success()
        return Outcome("sent", "", attempt, latency_ms=int((time.monotonic() - started) * 1000))

    async def _policies(self, runtime: ConnectorRuntime, job: Job) -> Outcome | None:
        """The re-check (expiry, conversion, consent), quiet hours and caps: an outcome when the action must not
        go now, else None."""
        action = job.action
        view = LeadView(action)
        now = self.now_ms()
        if expired(action, now, job.expires_at_ms):
            return Outcome("suppressed", "expired", job.attempts, "not sent before its expires_at_ms")
        situation = (
            await self.recheck.situation(action.lead_id, action.rule) if self.recheck is not None else LeadSituation()
        )
        snapshot = consent_block_reason(view, self.require_explicit_consent) if runtime.obeys_consent else None
        reason = recheck_reason(action, situation, obeys_consent=runtime.obeys_consent, snapshot_reason=snapshot)
        if reason is not None:
            detail = (
                "the lead converted after the action fired"
                if reason == "converted"
                else "marketing message without consent"
            )
            return Outcome("suppressed", reason, job.attempts, detail)
        if self.quiet_hours is not None and self.quiet_hours.applies(runtime.name, action.marketing):
            allowed_at = self.quiet_hours.next_allowed_ms(now, view.timezone)
            if allowed_at is not None:
                return await self._hold_back(job, allowed_at, "quiet_hours")
        free_at = await self.caps.reserve(action, runtime.name, now, _recipient(runtime, action))
        if free_at is not None:
            return await self._hold_back(job, free_at, "frequency_cap")
        return None

    async def _release_caps(self, runtime: ConnectorRuntime, action: Action) -> None:
        await self.caps.release(action, runtime.name, _recipient(runtime, action))

    async def _hold_back(self, job: Job, due_ms: int, reason: str) -> Outcome:
        if job.action.on_cap == "drop":
            return Outcome("suppressed", f"{reason}_drop", job.attempts, "the rule says on_cap: drop")
        return await self._wait(job, due_ms, "deferred", reason)

    async def _wait(self, job: Job, due_ms: int, why: str, reason: str) -> Outcome:
        entry = ScheduledDelivery(job.action, job.attempts, why, reason, due_ms, job.emitted_ms, job.expires_at_ms)
        if not await self.schedule.put(entry, only_if_absent=not job.from_schedule):
            return Outcome("duplicate", "already_scheduled", job.attempts)
        return Outcome("deferred", reason, job.attempts, next_attempt_ms=due_ms)

    async def _refused(self, runtime: ConnectorRuntime, job: Job) -> Outcome:
        """The breaker said no: nothing went to the peer, so no attempt is spent. The action waits in the schedule
        until the breaker will let a probe through (`CircuitBreaker.refused_wait_s`). From Kafka, an existing
        entry for the action (a redelivery after a crash) is kept: it already carries the action's attempts."""
        due = self.now_ms() + int(runtime.breaker.refused_wait_s() * 1000)
        entry = ScheduledDelivery(
            job.action, job.attempts, "circuit", "circuit_open", due, job.emitted_ms, job.expires_at_ms
        )
        await self.schedule.put(entry, only_if_absent=not job.from_schedule)
        detail = f"circuit of {runtime.name} is open: no attempt made"
        return Outcome("deferred", "circuit_open", job.attempts, detail, next_attempt_ms=due)

    async def _retry_or_give_up(self, runtime: ConnectorRuntime, job: Job, error: DeliveryError) -> Outcome:
        """After a failed real attempt: schedule the next one, or give up once `max_attempts` are spent."""
        attempt = job.attempts + 1
        retry_after = error.retry_after_s if isinstance(error, RetryableError) else None
        delay_s = runtime.retry.next_delay_s(attempt, retry_after)
        if delay_s is None:
            await self._release_caps(runtime, job.action)
            detail = f"gave up after {attempt} attempts; last error {error.reason}: {error.detail}"
            return Outcome("failed", "retries_exhausted", attempt, detail, dead_letter=True)
        due = self.now_ms() + int(delay_s * 1000)
        # From Kafka (a redelivery after a crash), an existing entry keeps its own, higher attempt count.
        entry = ScheduledDelivery(job.action, attempt, "retry", error.reason, due, job.emitted_ms, job.expires_at_ms)
        await self.schedule.put(entry, only_if_absent=not job.from_schedule)
        return Outcome("retried", error.reason, attempt, error.detail, next_attempt_ms=due)


def _recipient(runtime: ConnectorRuntime, action: Action) -> str | None:
    """The address the connector would write to, for the per-recipient caps; None when it has none or cannot
    say (the build step then reports what is wrong with the action)."""
    try:
        return runtime.connector.recipient_address(action)
    except Exception:
        return None
