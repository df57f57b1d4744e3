"""Journey KPIs and a lead's journey status in a real chDB store: the records and sends of the pure core's own run
(`simulate`) over a few leads, stored through the sink's row functions (some records stored twice, as a worker
restart re-emits them), and the counts compared with the records counted in Python."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from engine.cli import main
from engine.clickhouse.client import connect
from engine.clickhouse.history import lead_actions
from engine.clickhouse.journeys import journey_kpis, journey_status, lead_journeys
from engine.clickhouse.migrations import migrate
from engine.clickhouse.rows import COLUMNS, Record, to_row
from engine.commands.leads import LeadReport, _when
from engine.commands.leads import render as render_lead
from engine.commands.report import render_journeys
from engine.core.model import Action
from engine.core.simulate import simulate
from engine.demo.run import journey_lines
from engine.events import format_ts, parse_event
from engine.kafka import topics
from engine.language.loader import parse_rules

MIN = 60_000
HOUR = 60 * MIN
NOW = (int(time.time() * 1000) // HOUR) * HOUR
T0 = NOW - 48 * HOUR  # recent: inside the tables' TTLs

RULES = """
rules:
  - id: rescue
    kind: journey
    entry: {event: "Product Added"}
    exit_on: {event: "Order Completed"}
    goal: {event: "Order Completed"}
    goal_within: 1d
    steps:
      - {id: w1, wait: 1h}
      - {id: r1, send: {connector: email, template: cart_reminder}}
      - {id: w2, wait_for: {event: "Product Viewed", within: 2h}, then: hot, else: r2}
      - {id: r2, send: {connector: email, template: cart_discount}}
      - {id: stop, end: true}
      - {id: hot, send: {connector: slack, template: hot_lead}}
"""


def _event(name: str, lead: str, at_ms: int) -> Any:
    doc = {"type": "track", "event": name, "userId": lead, "messageId": f"{lead}-{name}-{at_ms}",
           "timestamp": format_ts(at_ms)}  # fmt: skip
    return parse_event(orjson.dumps(doc))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[dict[str, Any]], list[Action], str]]:
    events = [
        _event("Product Added", "quiet", T0),  # w1 → r1 → w2 times out → r2 → stop (completed)
        _event("Product Added", "looker", T0),  # r1, then a visit: hot (completed at hot)
        _event("Product Viewed", "looker", T0 + HOUR + 10 * MIN),
        _event("Product Added", "buyer", T0),  # exits at w1 by ordering (exit_on, and the goal)
        _event("Order Completed", "buyer", T0 + 20 * MIN),
        _event("Product Added", "late", T0 + 90 * MIN),  # buys after the reminder: exits at w2
        _event("Order Completed", "late", T0 + 3 * HOUR),
    ]
    updates: list[dict[str, Any]] = []
    actions = simulate(parse_rules(RULES), events, updates=updates)
    records = [u for u in updates if u["kind"] == "journey"]
    dsn = f"chdb://{tmp_path_factory.mktemp('journeys') / 'ch'}"
    client = connect(dsn)
    offsets = itertools.count()
    rows: dict[str, list[list[Any]]] = {}

    def add(kind: str, value: bytes, at_ms: int) -> None:
        table, row = to_row(Record(kind, 0, next(offsets), at_ms, b"k", value))
        rows.setdefault(table, []).append(row)

    try:
        migrate(client)
        for record in records:
            add(topics.LEAD_UPDATES, orjson.dumps(record), record["at_ms"])
        for record in records[:5]:  # a restart re-emits some records: stored again at other offsets
            add(topics.LEAD_UPDATES, orjson.dumps(record), record["at_ms"])
        for i, action in enumerate(actions):
            add(topics.ACTIONS, action.to_bytes(), action.fired_at_ms)
            outcome = "suppressed" if i == 0 else "sent"  # the first send was held and suppressed
            delivery = topics.delivery_record(action=action.to_json(), outcome=outcome, at_ms=action.fired_at_ms + 500)
            add(topics.DELIVERIES, delivery, action.fired_at_ms)
        for table, values in rows.items():
            client.insert(table, values, column_names=COLUMNS[table])
        yield client, records, actions, dsn
    finally:
        client.close()


def test_kpis_per_journey_and_step_count_each_record_once(store: Any) -> None:
    client, records, actions, _ = store
    [kpis] = journey_kpis(client, T0 - HOUR, NOW)
    counted = Counter((r["event"], r["step"], r["reason"]) for r in records)
    assert kpis["journey"] == "rescue"
    assert kpis["entered"] == counted[("entered", None, None)] == 4
    assert kpis["exited"] == {"exit_on": 2}
    assert kpis["completed"] == 2 and kpis["goal"] == 2 and kpis["goal_rate"] == 0.5
    assert (kpis["fired"], kpis["sent"]) == (len(actions), len(actions) - 1)
    steps = {s["step"]: s for s in kpis["steps"]}
    # in the order leads reach them
    assert [s["step"] for s in kpis["steps"]] == ["w1", "r1", "w2", "hot", "r2", "stop"]
    for step, row in steps.items():
        assert row["reached"] == counted[("reached", step, None)], step
        assert row["completed"] == counted[("completed", step, None)], step
    assert steps["w1"]["reached"] == 4 and steps["w1"]["exited"] == {"exit_on": 1} and steps["w1"]["goal"] == 1
    assert steps["w2"]["exited"] == {"exit_on": 1} and steps["w2"]["goal"] == 1
    fired = Counter(a.step for a in actions)
    assert {s: (steps[s]["fired"]) for s in fired} == dict(fired) == {"r1": 3, "r2": 1, "hot": 1}
    assert sum(steps[s]["sent"] for s in fired) == len(actions) - 1  # the suppressed one is fired, not sent
    assert (steps["stop"]["completed"], steps["hot"]["completed"]) == (1, 1)
    # a window before everything: nothing
    assert journey_kpis(client, T0 - 2 * HOUR, T0 - HOUR) == []
    text = render_journeys({"window": {"since_ms": T0, "until_ms": NOW}, "journeys": [kpis]})
    assert "rescue" in text and "exit_on 1" in text
    # the demo's summary lines
    assert journey_lines([kpis]) == [
        "  journey rescue            entered 4 · sent 4 of 5 fired · completed 2 · exited 2 · goal 2",
        "    sends by step (sent/fired): r1 2/3, hot 1/1, r2 1/1",
        "    other steps reached: w1 4, w2 3, stop 1",
    ]


def test_lead_status_from_the_stored_records(store: Any) -> None:
    client, _, _, _ = store
    [quiet] = lead_journeys(client, ["quiet"])
    assert (quiet.status, quiet.step, quiet.goal_ms) == ("completed", "stop", None)
    [buyer] = lead_journeys(client, ["buyer"])
    assert (buyer.status, buyer.step, buyer.reason, buyer.goal_ms) == ("exited", "w1", "exit_on", T0 + 20 * MIN)
    assert lead_journeys(client, ["nobody"]) == []
    # `nudge leads show`: the journey line and each action's journey step
    report = LeadReport("quiet", journeys=[quiet.to_json()])
    report.actions = [a.to_json() for a in lead_actions(client, "quiet")]
    text = render_lead(report)
    assert f"rescue                   completed at stop {_when(T0 + 3 * HOUR)} (entered {_when(T0)})" in text
    assert [a["journey_step"] for a in report.actions] == ["r1", "r2"]
    assert "rescue/r2" in text


def test_nudge_report_journeys_json(
    store: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_CLICKHOUSE_DSN", store[3])  # this process has the store open: the same engine
    assert main(["report", "--journeys", "--json", "--since", "7d"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert [(j["journey"], j["entered"], [s["step"] for s in j["steps"]]) for j in doc["journeys"]] == [
        ("rescue", 4, ["w1", "r1", "w2", "hot", "r2", "stop"])
    ]


def test_status_of_a_lead_in_the_middle_and_after_a_repeat() -> None:
    def rec(event: str, step: str | None, at: int, reason: str | None = None) -> dict[str, Any]:
        return {"kind": "journey", "lead_id": "u", "journey": "j", "event": event, "step": step, "reason": reason,
                "at_ms": at, "entry_ms": 100, "message_id": None}  # fmt: skip

    run = [rec("entered", None, 100), rec("reached", "w1", 100), rec("reached", "r1", 200), rec("reached", "w2", 200)]
    [status] = journey_status(run + run[2:])  # a restart re-emitted the records of the wake at 200
    assert (status.status, status.step, status.since_ms, status.entry_ms) == ("in", "w2", 200, 100)
    again = [{**r, "entry_ms": 900, "at_ms": r["at_ms"] + 800} for r in run[:2]]
    [status] = journey_status([*run, rec("completed", "w2", 300), *again])
    assert (status.status, status.step, status.entries) == ("in", "w1", 2)
