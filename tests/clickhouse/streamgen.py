"""A seeded, generated shop stream for the ClickHouse tests: events, fired actions, deliveries, dead
letters, lead updates — plus the facts the tests need to compute every KPI independently of ClickHouse.

Times are recent (inside the tables' TTLs), strictly increasing per lead, and every action carries the
wall-clock time the worker "emitted" it (sent as the Kafka record timestamp).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from engine.core.model import Action, make_action_id
from engine.events import format_ts
from engine.kafka import topics

VIEW, ADD, CHECKOUT, ORDER = "Product Viewed", "Product Added", "Checkout Started", "Order Completed"
MIN = 60_000
HOUR = 60 * MIN


@dataclass
class Message:
    topic: str  # logical topic (engine.kafka.topics.X)
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None


@dataclass
class Stream:
    events: list[dict[str, Any]] = field(default_factory=list)  # valid Segment events
    invalid: list[bytes] = field(default_factory=list)  # clickstream records the sink must skip
    actions: list[tuple[Action, int]] = field(default_factory=list)  # (action, emitted_at_ms)
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # delivery_record docs
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    lead_updates: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[Message]:
        import orjson

        out = [Message(topics.CLICKSTREAM, e["userId"].encode(), orjson.dumps(e)) for e in self.events]
        out += [Message(topics.CLICKSTREAM, b"bad", raw) for raw in self.invalid]
        out += [
            Message(topics.ACTIONS, a.lead_id.encode(), a.to_bytes(), emitted) for a, emitted in self.actions
        ]
        for d in self.deliveries:
            out.append(Message(topics.DELIVERIES, d["action_id"].encode(), orjson.dumps(d)))
        out += [Message(topics.DEAD_LETTERS, None, orjson.dumps(d)) for d in self.dead_letters]
        out += [
            Message(topics.LEAD_UPDATES, u["lead_id"].encode(), orjson.dumps(u)) for u in self.lead_updates
        ]
        return out


def _event(lead: str, name: str, ts: int, n: int, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "userId": lead,
        "messageId": f"{lead}-m{n}",
        "timestamp": format_ts(ts),
        "properties": props,
    }


def _action(
    rule: str,
    lead: str,
    fired_at: int,
    trigger: dict[str, Any],
    trigger_time: int,
    marketing: bool,
    **ctx: Any,
) -> Action:
    return Action(
        action_id=make_action_id(rule, "v1", lead, trigger["messageId"]),
        rule=rule,
        rule_version="v1",
        lead_id=lead,
        fired_at_ms=fired_at,
        trigger=(trigger["messageId"],),
        connector="email" if marketing else "slack",
        explanation=f"{rule} for {lead}",
        marketing=marketing,
        context=ctx,
        trigger_time_ms=trigger_time,
    )


def generate(now_ms: int, leads: int = 300, seed: int = 7, days_back: int = 3) -> Stream:
    """A mixed stream starting `days_back` days before `now_ms` and ending about a day later."""
    rng = random.Random(seed)
    stream = Stream()
    start = now_ms - days_back * 24 * HOUR
    for i in range(leads):
        lead = f"lead-{i:04d}"
        t = start + rng.randrange(0, 24 * HOUR)
        n = 0
        lead_events: list[dict[str, Any]] = []

        def emit(
            name: str, lead: str = lead, lead_events: list[dict[str, Any]] = lead_events, **props: Any
        ) -> dict[str, Any]:
            nonlocal t, n
            t += rng.randrange(1, 20) * MIN
            n += 1
            event = _event(lead, name, t, n, **props)
            lead_events.append(event)
            return event

        if rng.random() < 0.1:
            emit(ADD, sku="early")  # added before viewing: counts for abandonment, not for the ordered funnel
        for _ in range(rng.randrange(1, 4)):
            emit(VIEW, sku=f"sku-{rng.randrange(20)}")
        if rng.random() < 0.65:
            added = emit(ADD, sku="sku-1", price=rng.randrange(5, 200))
            if rng.random() < 0.5:
                emit(CHECKOUT)
                if rng.random() < 0.6:
                    emit(ORDER, revenue=round(rng.uniform(10, 300), 2))
            else:
                # Abandoned: the worker fires a marketing nudge 30 min after the add (a deadline).
                fired_at = t + 30 * MIN
                t = fired_at
                action = _action("cart-abandoned", lead, fired_at, added, int(added_ts(added)), True)
                emitted = fired_at + rng.randrange(50, 3000)
                stream.actions.append((action, emitted))
                outcome = rng.choice(["sent", "sent", "sent", "failed", "suppressed"])
                stream.deliveries.append(
                    _delivery(
                        action,
                        outcome,
                        at_ms=emitted + rng.randrange(10, 2000),
                        latency_ms=rng.randrange(5, 50),
                    )
                )
                roll = rng.random()
                if roll < 0.4:  # bought within 24 h of the nudge (recovered if it was sent)
                    t = fired_at + rng.randrange(1, 23) * HOUR
                    emit(ORDER, total=round(rng.uniform(10, 300), 2))
                elif roll < 0.5:  # bought a day later: credited by a 7-day attribution window, not by a 24 h one
                    t = fired_at + 25 * HOUR
                    emit(ORDER, revenue=50.0)
        if rng.random() < 0.15:
            pricing = emit("Pricing Viewed")
            rep = rng.choice(["rep-ana", "rep-bo", ""])
            ctx = {"owner": {"id": rep, "name": rep}} if rep else {}
            alert = _action("hot-lead", lead, t, pricing, t, False, **ctx)
            stream.actions.append((alert, t + rng.randrange(20, 800)))
            if rep and rng.random() < 0.7:
                stream.lead_updates.append(
                    {"lead_id": lead, "kind": "ack", "rep": rep, "at_ms": t + rng.randrange(1, 60) * MIN}
                )
            elif not rep and rng.random() < 0.6:
                # Assigned after the alert (the assignment service's record): owner from lead-updates.
                acked = t + rng.randrange(2, 90) * MIN if rng.random() < 0.5 else None
                card = {"id": "rep-cy", "name": "Cy", "email": "cy@example.com", "slack_id": "U1"}
                stream.lead_updates.append(
                    {"lead_id": lead, "kind": "assigned", "rep": card, "at_ms": t + MIN, "acked_at_ms": acked}
                )
            stream.lead_updates.append({"lead_id": lead, "kind": "stage_changed", "stage": "SQL", "at_ms": t})
        stream.events.extend(lead_events)
    stream.invalid = [b"not json", b'{"type":"track","event":"x"}', b'{"type":"nope","userId":"u"}']
    for k in range(5):
        stream.dead_letters.append(
            {
                "source": "worker",
                "reason": "bad_timestamp",
                "detail": "timestamp 'x' is not ISO-8601",
                "payload": f'{{"n":{k}}}',
                "payload_encoding": "utf-8",
                "topic": "clickstream",
                "partition": 0,
                "offset": k,
                "key": None,
                "at_ms": now_ms - 1000 * k,
            }
        )
    return stream


def added_ts(event: dict[str, Any]) -> int:
    from engine.events import parse_ts

    return parse_ts(event["timestamp"])


# Why a delivery did not happen, by outcome (a fixed choice, so the generated stream stays the same per seed).
REASONS = {"suppressed": "converted", "failed": "retries_exhausted"}


def _delivery(action: Action, outcome: str, *, at_ms: int, latency_ms: int) -> dict[str, Any]:
    import orjson

    record = topics.delivery_record(
        action=action.to_json(), outcome=outcome, at_ms=at_ms, latency_ms=latency_ms, reason=REASONS.get(outcome, "")
    )
    return orjson.loads(record)
