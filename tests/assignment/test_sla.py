"""SLA enforcement with a controllable clock against real Redis."""

from __future__ import annotations

import asyncio

import pytest

from engine.assignment import Assigner, SlaMonitor
from engine.core.model import Action
from tests.assignment.conftest import ManualClock, rep, roster

pytestmark = pytest.mark.integration

TRAITS = {"name": "Ada Lovelace", "email": "ada@example.org", "company": "Engines Ltd"}
LEAD = {"traits": TRAITS, "stage": "SQL", "score": 91}


async def test_no_ack_within_sla_reassigns_and_notifies_both(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("a"), rep("b"), ack_within_s=600), clock=clock)
    first = await assigner.assign("ada", LEAD)
    clock.advance(599)
    assert await assigner.due_sla_breaches() == []
    clock.advance(1)
    [breach] = await assigner.due_sla_breaches()
    assert (breach.lead_id, breach.rep_id, breach.deadline_ms) == ("ada", "a", first.sla_deadline_ms)

    [outcome] = await SlaMonitor(assigner).run_once()
    new = outcome.assignment
    assert (new.rep_id, new.previous_rep_id, new.reassignments) == ("b", "a", 1)
    assert new.sla_deadline_ms == int(clock() * 1000) + 600_000  # a fresh clock for the new owner
    assert (await assigner.owner("ada")).rep_id == "b"
    assert await assigner.store.loads() == {"a": 0, "b": 1}

    by_template = {(n.connector, n.template): n for n in outcome.notifications}
    assert set(by_template) == {
        ("slack", "lead_reassigned"),
        ("email", "lead_assigned"),
        ("email", "lead_reassigned_away"),
    }
    slack = by_template["slack", "lead_reassigned"]
    assert slack.payload["mention"] == "<@UB> <@UA>" and "moved from A to B" in slack.payload["text"]
    assert "Ada Lovelace (Engines Ltd)" in slack.payload["text"]
    assert by_template["email", "lead_assigned"].payload["to"] == "b@example.com"
    assert by_template["email", "lead_reassigned_away"].payload["to"] == "a@example.com"
    for action in outcome.notifications:
        assert not action.marketing and action.lead_id == "ada"
        assert action.context["owner"]["id"] == "b" and action.context["stage"] == "SQL"
        assert Action.from_json(action.to_bytes()) == action  # ready for the actions topic as it is
    # the old owner can no longer acknowledge; the new one can
    assert not await assigner.ack("ada", "a")
    assert await assigner.ack("ada", "b")
    clock.advance(10_000)
    assert await SlaMonitor(assigner).run_once() == []


async def test_two_monitors_act_on_a_breach_once(redis_client, clock: ManualClock):
    r = roster(rep("a"), rep("b"), rep("c"), ack_within_s=60)
    one, two = Assigner(redis_client, r, clock=clock), Assigner(redis_client, r, clock=clock)
    for i in range(20):
        await one.assign(f"lead-{i}", LEAD)
    clock.advance(61)
    results = await asyncio.gather(SlaMonitor(one).run_once(), SlaMonitor(two).run_once())
    moved = [o for result in results for o in result if o.assignment]
    assert sorted(o.breach.lead_id for o in moved) == sorted(f"lead-{i}" for i in range(20))
    assert all(o.assignment.rep_id != o.breach.rep_id for o in moved)
    ids = [a.action_id for o in moved for a in o.notifications]
    assert len(ids) == len(set(ids)) == 60
    assert sum((await one.store.loads()).values()) == 20


async def test_nobody_else_free_keeps_the_lead_and_reminds_the_owner(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("a"), rep("b"), ack_within_s=60), clock=clock)
    await assigner.assign("ada", LEAD)
    await assigner.set_availability("b", False)
    clock.advance(60)
    [outcome] = await SlaMonitor(assigner).run_once()
    assert outcome.assignment is None
    [reminder] = outcome.notifications
    assert (reminder.connector, reminder.template) == ("slack", "lead_sla_missed")
    assert reminder.payload["rep"]["id"] == "a"
    assert await SlaMonitor(assigner).run_once() == []  # the clock restarted: not due again yet
    clock.advance(60)
    await assigner.set_availability("b", True)
    [outcome] = await SlaMonitor(assigner).run_once()
    assert outcome.assignment.rep_id == "b"


async def test_reassignments_stop_after_the_limit(redis_client, clock: ManualClock):
    two_moves = roster(rep("a"), rep("b"), ack_within_s=60, max_reassignments=2)
    assigner = Assigner(redis_client, two_moves, clock=clock)
    await assigner.assign("ada", LEAD)
    owners = []
    for _ in range(3):
        clock.advance(60)
        [outcome] = await SlaMonitor(assigner).run_once()
        owners.append(outcome.assignment.rep_id if outcome.assignment else None)
    assert owners == ["b", "a", None]  # a, b were both tried; back to a; then the limit stops moving it
    clock.advance(3600)
    assert await assigner.due_sla_breaches() == []
    events = [h["event"] for h in await assigner.store.history("ada")]
    assert events == ["assigned", "reassigned", "reassigned", "sla_exhausted"]


async def test_an_ack_between_detection_and_move_wins(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("a"), rep("b"), ack_within_s=60), clock=clock)
    await assigner.assign("ada", LEAD)
    clock.advance(61)
    [breach] = await assigner.due_sla_breaches()
    assert await assigner.ack("ada", "a")  # lands after the monitor saw the breach
    assert await SlaMonitor(assigner).handle(breach) is None
    owner = await assigner.owner("ada")
    assert (owner.rep_id, owner.reassignments) == ("a", 0) and owner.acked_at_ms is not None
    # and at the Lua level: a move that names a stale deadline is refused even without the snapshot check
    result = await assigner.store.commit(
        "ada", rep_id="b", capacity=10, cursor_pool=None, expected_cursor=None, expected_version=None,
        previous_rep="a", deadline_ms=1, breached_deadline_ms=breach.deadline_ms,
        history_entry={}, fields={"rep": "b"},
    )  # fmt: skip
    assert (result.status, result.detail) == ("moved", "a")
