"""Recording outcomes: the `deliveries` record, the dead letter, the metrics and the log line of each outcome."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiokafka import AIOKafkaProducer

from engine.config import Settings
from engine.core.model import Action
from engine.dispatch.delivery import Outcome
from engine.dispatch.redaction import Redactor
from engine.kafka.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC
from engine.kafka.topics import DELIVERIES, dead_letter_record, delivery_record
from engine.metrics import ACTIONS, CONNECTOR_RETRIES, DEAD_LETTERS, DELIVERY_DELAY

logger = logging.getLogger("nudge.dispatcher")
# Reason codes are short snake_case words from bounded sets (policy reasons, `http_<status>`, `smtp_4xx`, ...);
# anything else (a connector that put text in a reason) is counted as `other`, so the label stays bounded.
_REASON_LABEL = re.compile(r"[a-z][a-z0-9_]{0,39}")


def reason_label(reason: str) -> str:
    """The `reason` label value of `nudge_actions_total`: the code itself, "" for none, else `other`."""
    return reason if not reason or _REASON_LABEL.fullmatch(reason) else "other"

# Sends are the bulk and are counted in metrics and `deliveries`: debug. What needs a look: warning.
_LOG_LEVELS = {
    "sent": logging.DEBUG,
    "duplicate": logging.DEBUG,
    "held_out": logging.DEBUG,  # an experiment's control group: as many as the holdout share, by design
    "deferred": logging.INFO,
    "suppressed": logging.INFO,
    "retried": logging.WARNING,
    "failed": logging.WARNING,
}


class OutcomeRecorder:
    """Writes the records, metrics and log line of each outcome; every method returns once the broker
    acknowledged what it sent, so the caller may then commit the action's offset, and raises the producer's
    error otherwise (the caller retries the whole call, so a record may be sent twice: at-least-once).

    Every reason and detail goes through the `Redactor`: no secret reaches a record, a log line or a metric
    label. Metric labels stay bounded: a connector name not in the connectors file is counted as `unknown`, a
    reason that is not a short code as `other` (`reason_label`).
    """

    def __init__(
        self, producer: AIOKafkaProducer, settings: Settings, redactor: Redactor, connectors: set[str]
    ) -> None:
        self.producer = producer
        self.deliveries = settings.topic(DELIVERIES)
        self.dead_letters = settings.topic(DEAD_LETTERS_TOPIC)
        self.redactor = redactor
        self.connectors = connectors

    def _label(self, connector: str) -> str:
        return connector if connector in self.connectors else "unknown"

    async def record(
        self, action: Action, outcome: Outcome, emitted_ms: int, raw: bytes | None = None
    ) -> None:
        """One `delivery_record` to `deliveries` (key = action id) and, for an outcome that ends in a dead letter,
        one `dead_letter_record` (source `dispatcher`, key = lead id, payload = `raw` or the action) to
        `dead-letters`. `emitted_ms`: when the worker emitted the action (wall clock): the delivery delay starts
        there."""
        now_ms = int(time.time() * 1000)
        connector = self._label(action.connector)
        reason = self.redactor.redact(outcome.reason)
        doc = action.to_json()
        futures = [
            await self.producer.send(
                self.deliveries,
                delivery_record(
                    action=doc,
                    outcome=outcome.outcome,
                    attempt=outcome.attempt,
                    reason=reason,
                    latency_ms=outcome.latency_ms,
                    next_attempt_ms=outcome.next_attempt_ms,
                    at_ms=now_ms,
                ),
                key=action.action_id.encode(),
            )
        ]
        detail = self.redactor.redact(outcome.detail)
        if outcome.dead_letter:
            futures.append(
                await self.producer.send(
                    self.dead_letters,
                    dead_letter_record(
                        source="dispatcher",
                        reason=reason,
                        detail=f"{action.connector}: {detail}",
                        payload=raw if raw is not None else action.to_bytes(),
                        key=action.lead_id,
                        at_ms=now_ms,
                    ),
                    key=action.lead_id.encode(),
                )
            )
            DEAD_LETTERS.labels(source="dispatcher", reason=reason).inc()
        await asyncio.gather(*futures)
        ACTIONS.labels(connector=connector, outcome=outcome.outcome, reason=reason_label(reason)).inc()
        if outcome.outcome == "sent":
            DELIVERY_DELAY.labels(connector=connector).observe(max(0.0, (now_ms - emitted_ms) / 1000))
        elif outcome.outcome == "retried":
            CONNECTOR_RETRIES.labels(connector=connector).inc()
        # A refusal by an open circuit is one line per waiting action and reset period: the breaker logs its state.
        level = logging.DEBUG if outcome.reason == "circuit_open" else _LOG_LEVELS[outcome.outcome]
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "%s %s via %s (rule %s, attempt %d)%s",
                outcome.outcome,
                action.action_id,
                action.connector,
                action.rule,
                outcome.attempt,
                f": {reason} {detail}".rstrip() if reason else "",
            )

    async def malformed(
        self,
        value: bytes | None,
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        detail: str,
    ) -> None:
        """Dead-letter an `actions` record that is not a valid action, with the reason."""
        future = await self.producer.send(
            self.dead_letters,
            dead_letter_record(
                source="dispatcher",
                reason=reason,
                detail=self.redactor.redact(detail),
                payload=value,
                topic=topic,
                partition=partition,
                offset=offset,
                key=key.decode("utf-8", "replace") if key else None,
            ),
            key=key,
        )
        await future
        DEAD_LETTERS.labels(source="dispatcher", reason=reason).inc()
        logger.warning("dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason)
