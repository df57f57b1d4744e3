"""Issue 19's acceptance on the real stack: an experiment with a holdout, run by a `nudge worker` and a
`nudge dispatch` (subprocesses, the dev stack's Tansu broker and Redis, a webhook peer on loopback), then stored by
the ClickHouse sink (in this process, chDB).

Nine shoppers leave their carts (`cart_abandoned`, 1 s, expires after 10 min; experiment `cart-e2e`: holdout 30 %,
variants a and b, b adds a payload key), chosen so that each arm has three. Every reminder fires; the holdout's are
recorded `held_out` by the dispatcher and never reach the peer, the others are delivered with their variant (b's
body carries its payload key). One shopper of each arm buys after the reminder: a `goal` record with the order's
revenue. The worker publishes one `assigned` record per shopper with the formula's arm. In ClickHouse the `actions`
rows carry experiment, variant and held_out, and the holdout's delivery step is `held_out`; `nudge report
experiments` shows the three arms (leads, sends, conversions, revenue) and claims no uplift from nine leads.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from engine.config import Settings
from engine.core.experiments import assign_arm
from engine.testing import RecordingPeer, wait_until
from tests.integration.rig import WorkerAndDispatcher
from tests.integration.worker_process import send, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXPERIMENT = "cart-e2e"
RULES = f"""
rules:
  - id: cart_abandoned
    kind: absence
    when: {{event: Product Added}}
    unless: {{event: Order Completed}}
    within: 1s
    expires_after: 10m
    action: {{connector: webhook, payload: {{kind: reminder}}}}
    experiment:
      id: {EXPERIMENT}
      holdout: 30%
      variants:
        - {{id: a, weight: 1}}
        - {{id: b, weight: 1, action: {{payload: {{offer: ten_percent}}}}}}
      goal: {{event: Order Completed}}
      goal_within: 1h
"""
CONNECTORS = """
connectors:
  webhook:
    type: webhook
    url: {url}
dispatcher: {{schedule_poll_s: 0.05, commit_interval_s: 0.2, session_timeout_ms: 6000}}
"""
TOPICS = ("clickstream", "identity-handovers", "actions", "deliveries", "dead-letters", "lead-updates")
FINAL = ("sent", "held_out", "suppressed", "failed")


def arm(lead: str) -> str:
    return assign_arm(EXPERIMENT, lead, 0.3, [("a", 1), ("b", 1)])


def shoppers(suffix: str) -> dict[str, str]:
    """Three leads per arm: lead id -> arm."""
    chosen: dict[str, str] = {}
    for i in range(1000):
        lead = f"shopper{i}-{suffix}"
        if Counter(chosen.values())[arm(lead)] < 3:
            chosen[lead] = arm(lead)
        if len(chosen) == 9:
            return chosen
    raise AssertionError("no three leads per arm")


async def test_holdout_actions_are_held_out_and_the_others_sent_with_their_variant(
    settings: Settings, tmp_path: Path
) -> None:
    began = time.monotonic()
    settings = with_rules(settings, tmp_path, RULES, allowed_lateness_s=0.1, timer_interval_s=0.05)
    leads = shoppers(f"{time.time_ns() % 10**9}")
    buyers = {next(lead for lead, a in leads.items() if a == wanted) for wanted in ("holdout", "a", "b")}
    async with (
        RecordingPeer() as peer,
        WorkerAndDispatcher(settings, tmp_path, CONNECTORS.format(url=peer.url), TOPICS) as run,
    ):
        out = run.out
        t0 = int(time.time() * 1000)
        await send(settings, [(lead.encode(), track(lead, "Product Added", t0, f"pa-{lead}")) for lead in leads])

        def final() -> dict[str, dict[str, object]]:
            docs = (r.json() for r in out.of("deliveries"))
            return {d["lead_id"]: d for d in docs if d["outcome"] in FINAL}

        await wait_until(lambda: len(final()) == len(leads), 15, "every reminder's final outcome")
        bought = int(time.time() * 1000)
        orders = [(b.encode(), track(b, "Order Completed", bought, f"oc-{b}", revenue=40)) for b in buyers]
        await send(settings, orders)

        actions = {a["action_id"]: a for a in (r.json() for r in out.of("actions"))}
        assert {a["lead_id"]: (a["experiment"], a["variant"], a["held_out"]) for a in actions.values()} == {
            lead: (EXPERIMENT, a, a == "holdout") for lead, a in leads.items()
        }
        outcomes = {lead: (d["outcome"], d["variant"], d["held_out"]) for lead, d in final().items()}
        assert outcomes == {
            lead: ("held_out", "holdout", True) if a == "holdout" else ("sent", a, False)
            for lead, a in leads.items()
        }
        # the peer got exactly the non-holdout reminders, each with its variant's action
        await asyncio.sleep(0.5)
        bodies = [orjson.loads(r.body) for r in peer.requests]
        assert sorted(b["lead_id"] for b in bodies) == sorted(lead for lead, a in leads.items() if a != "holdout")
        for body in bodies:
            assert body["variant"] == leads[body["lead_id"]] and not body["held_out"]
            offer = {"offer": "ten_percent"} if body["variant"] == "b" else {}
            assert body["payload"] == {"kind": "reminder", **offer}

        def experiment_records() -> list[dict[str, object]]:
            docs = (r.json() for r in out.of("lead-updates"))
            return [d for d in docs if d.get("kind") == "experiment"]

        await wait_until(
            lambda: sum(d["event"] == "goal" for d in experiment_records()) == len(buyers), 10, "the goal records"
        )
        records = experiment_records()
        assigned = {d["lead_id"]: d["variant"] for d in records if d["event"] == "assigned"}
        assert assigned == leads and len([d for d in records if d["event"] == "assigned"]) == len(leads)
        goals = {d["lead_id"]: (d["variant"], d["value"]) for d in records if d["event"] == "goal"}
        assert goals == {b: (leads[b], 40.0) for b in buyers}
        assert run.dispatcher.stop() == 0, run.dispatcher.log_tail()
    await _in_clickhouse(settings, leads)
    print(f"wall: {time.monotonic() - began:.1f} s")


async def _in_clickhouse(settings: Settings, leads: dict[str, str]) -> None:
    """The run stored by the sink: every `actions` row carries the arm; the holdout's delivery step is held_out."""
    from engine.clickhouse.client import connect
    from engine.clickhouse.migrations import migrate
    from engine.clickhouse.sink import Sink

    sink = Sink(settings, max_rows=500, max_wait_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    client = connect(settings.clickhouse_dsn)  # same path, same process: shares the sink's engine
    try:
        migrate(client)
        query = (
            "SELECT lead_id, step, experiment, variant, held_out FROM actions FINAL "
            "WHERE experiment = {experiment:String} AND step != 'fired' ORDER BY lead_id"
        )

        def rows() -> list[tuple[object, ...]]:
            return [tuple(r) for r in client.query(query, parameters={"experiment": EXPERIMENT}).result_rows]

        await wait_until(lambda: len(rows()) >= len(leads), 60, "the outcomes in ClickHouse", off_loop=True)
        assert sorted(rows()) == sorted(
            (lead, "held_out" if a == "holdout" else "sent", EXPERIMENT, a, a == "holdout") for lead, a in leads.items()
        )
        fired = client.query(
            "SELECT count(), countIf(held_out) FROM actions FINAL WHERE experiment = {experiment:String} "
            "AND step = 'fired'",
            parameters={"experiment": EXPERIMENT},
        ).result_rows[0]
        assert tuple(fired) == (len(leads), 3)
        # `nudge report experiments` on the run: three leads per arm, one conversion each, nothing sent to the
        # holdout; nine leads are below the documented minimum, so no uplift is claimed.
        from engine.clickhouse.experiments import report
        from engine.commands.report import render_experiments

        def measured() -> dict:
            return report(client, 0, int(time.time() * 1000) + 3_600_000, {EXPERIMENT: (0.3, [("a", 1.0), ("b", 1.0)])})

        def complete() -> bool:
            arms = [a for e in measured()["experiments"] for a in e["arms"]]
            return sum(a["leads"] for a in arms) == len(leads) and sum(a["conversions"] for a in arms) == 3

        await wait_until(complete, 60, "the experiment's arms in ClickHouse", off_loop=True)
        (experiment,) = measured()["experiments"]
        arms = {a["arm"]: (a["leads"], a["actions_sent"], a["conversions"], a["revenue"]) for a in experiment["arms"]}
        assert arms == {"holdout": (3, 0, 1, 40.0), "a": (3, 3, 1, 40.0), "b": (3, 3, 1, 40.0)}
        assert experiment["held_out_actions"] == 3 and not experiment["balance"]["mismatch"]
        assert {c["verdict"] for c in experiment["comparisons"]} == {"not enough data yet"}
        text = render_experiments(measured())
        assert "Experiment cart-e2e (rule cart_abandoned)" in text and "b vs holdout" in text
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        client.close()
