"""Circuit breaker per connector: stop hammering a peer that keeps failing, probe it now and then."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from enum import IntEnum

from pydantic import BaseModel, ConfigDict, Field

from engine.metrics import CIRCUIT_STATE

logger = logging.getLogger("nudge.dispatcher")
# While a half-open circuit's probe is out, refused attempts look again this soon (capped at reset_after_s):
# long enough not to spin, short enough that a successful probe releases the backlog within about a second.
PROBE_RECHECK_S = 1.0


class CircuitState(IntEnum):
    """Values of `nudge_connector_circuit_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitConfig(BaseModel):
    """Circuit breaker thresholds of one connector (`circuit:` in the connectors file)."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    reset_after_s: float = Field(30.0, ge=0, description="how long the circuit stays open before one probe")


class CircuitBreaker:
    """The breaker of one connector, in memory, per dispatcher process (a restarted dispatcher starts closed);
    one event loop, not thread-safe. Its state is exported as `nudge_connector_circuit_state`.

    - closed (0): every send goes through; `failure_threshold` consecutive failures open the circuit.
    - open (2): `allow()` is False (the dispatcher reschedules the action durably instead of calling the peer,
      and the refusal spends none of the action's retry budget) until `reset_after_s` have passed; then the
      circuit becomes half-open.
    - half-open (1): one probe at a time is allowed; its success closes the circuit, its failure opens it again.
      A probe that never reports back stops blocking after `max(reset_after_s, 1 s)`.
    Only failures of the peer or the way to it are recorded (`record_failure`: timeouts, connection errors, 5xx,
    429, SMTP 4xx). An attempt that ended without saying anything about the peer (a permanent 4xx for one
    action, a connector bug) calls `release()`; an action that cannot even be built never gets to `allow()`.
    State changes are logged (opened: warning; closed again: info).
    """

    def __init__(
        self,
        name: str,
        config: CircuitConfig,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._probe_started = 0.0
        self._state = CircuitState.CLOSED
        CIRCUIT_STATE.labels(connector=name).set(0)

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.config.reset_after_s:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def retry_in_s(self) -> float:
        """Seconds until the circuit lets a probe through (0 when it already does)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.config.reset_after_s - (self._clock() - self._opened_at))

    def refused_wait_s(self) -> float:
        """How long an attempt refused by `allow()` should wait before it asks again: until the circuit lets a
        probe through when it is open, a short recheck (`PROBE_RECHECK_S`, at most `reset_after_s`) while a
        half-open probe is out; plus a random spread of up to that recheck, so a backlog of refused actions does
        not come back in one instant."""
        recheck = min(PROBE_RECHECK_S, self.config.reset_after_s)
        return self.retry_in_s() + recheck * self._rng.uniform(0.5, 1.0)

    def allow(self) -> bool:
        """May a send go to the peer now? In half-open state, True takes the one probe slot: report back with
        `record_success`, `record_failure` or `release`."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN:
            # A probe that never reported back (its task died) must not block the circuit forever.
            stale = self._clock() - self._probe_started >= max(self.config.reset_after_s, 1.0)
            if not self._probe_in_flight or stale:
                self._probe_in_flight = True
                self._probe_started = self._clock()
                return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self._failures >= self.config.failure_threshold:
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release(self) -> None:
        """The allowed call ended without saying anything about the peer (e.g. a permanent 4xx)."""
        self._probe_in_flight = False

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            if state is CircuitState.OPEN:
                why = "its probe failed" if self._state is CircuitState.HALF_OPEN else "failures in a row"
                logger.warning(
                    "circuit of %s open (%s): no attempt for %g s, then one probe",
                    self.name,
                    why,
                    self.config.reset_after_s,
                )
            elif state is CircuitState.CLOSED:
                logger.info("circuit of %s closed: the probe went through", self.name)
        self._state = state
        CIRCUIT_STATE.labels(connector=self.name).set(int(state))
