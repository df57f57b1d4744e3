"""Recovered revenue counts only orders after a marketing nudge that was actually `sent`, within the attribution
window, last touch; the report shows why actions were not sent; `nudge leads show` shows each action's outcome and
its reason. A hand-made history in a real chDB store, written through the sink's own row functions."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from engine.clickhouse import kpis
from engine.clickhouse.client import connect
from engine.clickhouse.history import lead_actions
from engine.clickhouse.migrations import migrate
from engine.clickhouse.rows import COLUMNS, Record, to_row
from engine.commands.leads import LeadReport
from engine.commands.leads import render as render_lead
from engine.commands.report import render
from engine.core.model import Action, make_action_id
from engine.events import format_ts
from engine.kafka import topics

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
NOW = (int(time.time() * 1000) // MIN) * MIN  # recent: inside the tables' TTLs
T0 = NOW - 20 * DAY
_offsets = itertools.count()


class History:
    """Records as the topics carry them, stored the way `nudge sink` stores them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.rows: dict[str, list[list[Any]]] = {}

    def _add(self, kind: str, key: str, doc: dict[str, Any] | bytes, at_ms: int) -> None:
        value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        table, row = to_row(Record(kind, 0, next(_offsets), at_ms, key.encode(), value))
        self.rows.setdefault(table, []).append(row)

    def order(self, lead: str, at_ms: int, revenue: float) -> None:
        event = {"type": "track", "event": "Order Completed", "userId": lead, "messageId": f"o-{lead}-{at_ms}",
                 "timestamp": format_ts(at_ms), "properties": {"revenue": revenue}}  # fmt: skip
        self._add(topics.CLICKSTREAM, lead, event, at_ms)

    def fired(self, lead: str, rule: str, at_ms: int, *, marketing: bool = True, connector: str = "email") -> Action:
        action = Action(
            action_id=make_action_id(rule, "1", lead, f"{rule}-{at_ms}"), rule=rule, rule_version="1", lead_id=lead,
            fired_at_ms=at_ms, trigger=(f"t-{at_ms}",), connector=connector, explanation="", marketing=marketing,
        )  # fmt: skip
        self._add(topics.ACTIONS, lead, action.to_bytes(), at_ms)
        return action

    def outcome(self, action: Action, outcome: str, at_ms: int, reason: str = "", attempt: int = 1) -> None:
        record = topics.delivery_record(
            action=action.to_json(), outcome=outcome, reason=reason, at_ms=at_ms, attempt=attempt,
            next_attempt_ms=at_ms + HOUR if outcome == "deferred" else None,
        )  # fmt: skip
        self._add(topics.DELIVERIES, action.action_id, record, at_ms)

    def store(self) -> None:
        for table, rows in self.rows.items():
            self.client.insert(table, rows, column_names=COLUMNS[table])
        self.rows.clear()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    client = connect(f"chdb://{tmp_path_factory.mktemp('attribution') / 'ch'}")
    try:
        migrate(client)
        h = History(client)
        # sent, then bought 2 days later: credited
        sent = h.fired("sent", "cart", T0)
        h.outcome(sent, "sent", T0 + 1000)
        h.order("sent", T0 + 2 * DAY, 100.0)
        # fired, held by quiet hours, then suppressed because the lead bought: the order is NOT the nudge's
        converted = h.fired("converted", "cart", T0)
        h.outcome(converted, "deferred", T0 + 1000, "quiet_hours")
        h.order("converted", T0 + HOUR, 80.0)
        h.outcome(converted, "suppressed", T0 + HOUR + 500, "converted", attempt=2)
        # unsubscribed while held; expired while held; failed at the peer: none earns the later order
        for lead, step, reason in (("unsub", "suppressed", "unsubscribed"), ("late", "suppressed", "expired"),
                                   ("bounced", "failed", "smtp_recipient_refused")):  # fmt: skip
            action = h.fired(lead, "cart", T0)
            h.outcome(action, step, T0 + 2 * HOUR, reason)
            h.order(lead, T0 + DAY, 50.0)
        # held 8 h, sent at the window end; one order while it was held (not credited), one after (credited)
        held = h.fired("held", "browse", T0)
        h.outcome(held, "deferred", T0 + 500, "quiet_hours")
        h.outcome(held, "sent", T0 + 8 * HOUR, attempt=2)
        h.order("held", T0 + 4 * HOUR, 10.0)
        h.order("held", T0 + 9 * HOUR, 20.0)
        # sent, bought 8 days later: outside 7 d, inside 14 d
        slow = h.fired("slow", "cart", T0)
        h.outcome(slow, "sent", T0 + 1000)
        h.order("slow", T0 + 8 * DAY, 40.0)
        # two sent nudges of two rules, then one order: the latest one gets it (last touch)
        first = h.fired("twice", "browse", T0)
        h.outcome(first, "sent", T0 + 1000)
        second = h.fired("twice", "cart", T0 + DAY)
        h.outcome(second, "sent", T0 + DAY + 1000)
        h.order("twice", T0 + 2 * DAY, 30.0)
        # a sales alert to a rep is no marketing nudge
        alert = h.fired("alerted", "hot_lead", T0, marketing=False, connector="slack")
        h.outcome(alert, "sent", T0 + 1000)
        h.order("alerted", T0 + HOUR, 500.0)
        # redelivered after it was sent: still sent once
        again = h.fired("again", "cart", T0)
        h.outcome(again, "sent", T0 + 1000)
        h.outcome(again, "duplicate", T0 + 2000, "already_sent", attempt=2)
        h.order("again", T0 + DAY, 5.0)
        h.store()
        yield h
    finally:
        client.close()


def test_only_orders_after_a_sent_marketing_nudge_count_last_touch_within_the_window(history: History) -> None:
    result = kpis.recovered(history.client, T0, NOW)
    assert result["by_rule"] == [
        {"rule": "browse", "orders": 1, "revenue": 20.0},  # held: only the order after it was sent
        {"rule": "cart", "orders": 3, "revenue": 135.0},  # sent 100, twice 30 (the later, cart), again 5
    ]
    assert (result["orders"], result["revenue"]) == (4, 155.0)
    assert result["attribution"] == {"window_ms": 7 * DAY, "model": "last_touch", "counts": "sent"}
    longer = kpis.recovered(history.client, T0, NOW, attribution_ms=14 * DAY)
    assert (longer["orders"], longer["revenue"]) == (5, 195.0)  # slow's order, 8 days after its send
    shorter = kpis.recovered(history.client, T0, NOW, attribution_ms=2 * HOUR)
    assert (shorter["orders"], shorter["revenue"]) == (1, 20.0)  # only held's, 1 h after the send


def test_orders_outside_the_report_window_are_not_counted(history: History) -> None:
    assert kpis.recovered(history.client, T0 + 3 * DAY, NOW)["orders"] == 0  # slow's order is after 7 d
    assert kpis.recovered(history.client, T0, T0 + 2 * DAY)["orders"] == 2  # held's (9 h) and again's (1 d)


def test_the_report_shows_why_actions_were_not_sent(history: History) -> None:
    report = kpis.report(history.client, T0, NOW)
    assert report["not_sent"] == [
        {"rule": "cart", "outcome": "failed", "reason": "smtp_recipient_refused", "actions": 1},
        {"rule": "cart", "outcome": "suppressed", "reason": "converted", "actions": 1},
        {"rule": "cart", "outcome": "suppressed", "reason": "expired", "actions": 1},
        {"rule": "cart", "outcome": "suppressed", "reason": "unsubscribed", "actions": 1},
    ]
    text = render(report)
    assert "Recovered revenue: 4 orders, 155.00" in text
    assert "actually sent to the lead at most 7 d before it" in text and "last touch" in text
    assert "suppressed  unsubscribed" in text and "suppressed  converted" in text
    with_14d = render(kpis.report(history.client, T0, NOW, 14 * DAY))
    assert "at most 14 d before it" in with_14d


def test_leads_show_gives_each_action_its_outcome_and_reason(history: History) -> None:
    (converted,) = lead_actions(history.client, "converted")
    assert (converted.rule, converted.outcome, converted.reason) == ("cart", "suppressed", "converted")
    assert [s.step for s in converted.steps] == ["fired", "deferred", "suppressed"]
    (again,) = lead_actions(history.client, "again")
    assert (again.outcome, again.reason) == ("sent", "")  # a later duplicate is a redelivery
    first, second = lead_actions(history.client, "twice")
    assert (first.rule, second.rule) == ("browse", "cart")  # oldest first
    report = LeadReport("converted", actions=[a.to_json() for a in lead_actions(history.client, "converted")])
    line = next(line for line in render_lead(report).splitlines() if "cart" in line)
    assert "suppressed: converted" in line and "(deferred quiet_hours → suppressed converted)" in line
    assert lead_actions(history.client, "nobody") == []
