"""Assigner against real Redis: idempotency, capacity, availability, ack, release, history."""

from __future__ import annotations

import orjson
import pytest

from engine.assignment import Assigner, UnknownRep
from tests.assignment.conftest import ManualClock, rep, roster

pytestmark = pytest.mark.integration


async def test_assign_is_idempotent_and_carries_the_rep_card(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("a"), rep("b")), clock=clock)
    first = await assigner.assign("lead-1", {"traits": {"email": "x@y.io"}, "score": 80})
    assert (first.rep_id, first.email, first.slack_id, first.created) == ("a", "a@example.com", "UA", True)
    assert first.assigned_at_ms == int(clock() * 1000)
    assert first.sla_deadline_ms == first.assigned_at_ms + 600_000
    clock.advance(5)
    again = await assigner.assign("lead-1", {})
    assert (again.rep_id, again.created, again.assigned_at_ms) == ("a", False, first.assigned_at_ms)
    assert (await assigner.assign("lead-2", {})).rep_id == "b"
    assert await assigner.store.loads() == {"a": 1, "b": 1}
    assert await assigner.lead_of("lead-1") == {"traits": {"email": "x@y.io"}, "score": 80}
    update = orjson.loads(first.lead_update())
    assert (update["kind"], update["rep"]["id"], update["lead_id"]) == ("assigned", "a", "lead-1")


async def test_capacity_release_and_nobody_eligible(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("a", capacity=1)), clock=clock)
    assert (await assigner.assign("l1", {})).rep_id == "a"
    assert await assigner.assign("l2", {}) is None  # a is full: nothing stored
    assert await assigner.owner("l2") is None
    await assigner.release("l1")
    assert await assigner.owner("l1") is None
    assert await assigner.store.loads() == {"a": 0}
    assert (await assigner.assign("l2", {})).rep_id == "a"
    assert [h["event"] for h in await assigner.store.history("l1")] == ["assigned", "released"]


async def test_availability_changes_apply_to_every_assigner(redis_client, clock: ManualClock):
    r = roster(rep("a"), rep("b"))
    one, two = Assigner(redis_client, r, clock=clock), Assigner(redis_client, r, clock=clock)
    await one.set_availability("a", False)
    assert {(await two.assign(f"l{i}", {})).rep_id for i in range(3)} == {"b"}
    await two.set_availability("a", True)
    assert (await one.assign("l9", {})).rep_id == "a"
    with pytest.raises(UnknownRep):
        await one.set_availability("zed", False)
    statuses = {s.id: s for s in await one.rep_statuses()}
    assert statuses["b"].open_leads == 3 and statuses["a"].available


async def test_only_the_owner_can_acknowledge(redis_client, clock: ManualClock):
    assigner = Assigner(redis_client, roster(rep("a"), rep("b")), clock=clock)
    await assigner.assign("lead", {})
    assert (await assigner.ack_detail("lead", "b")).status == "not_owner"
    assert (await assigner.ack_detail("nobody", "a")).status == "unknown"
    assert await assigner.ack("lead", "a")
    assert (await assigner.ack_detail("lead", "a")).status == "already"
    clock.advance(3600)
    assert await assigner.due_sla_breaches() == []  # acknowledged: the SLA clock stopped
    assert (await assigner.owner("lead")).acked_at_ms is not None


async def test_territory_strategy_end_to_end(redis_client, clock: ManualClock):
    r = roster(rep("fr", territories=["FR"]), rep("us", territories=["US"]), strategy="territory")
    assigner = Assigner(redis_client, r, clock=clock)
    assert (await assigner.assign("l-us", {"traits": {"country": "US"}})).rep_id == "us"
    fallback = await assigner.assign("l-jp", {"traits": {"country": "JP"}})
    assert fallback.strategy == "territory>round_robin"
    explicit = Assigner(redis_client, r, clock=clock, strategy="weighted")
    assert (await explicit.assign("l-x", {})).strategy == "weighted"


async def test_with_owner_puts_the_rep_on_a_hot_lead_action(redis_client, clock: ManualClock):
    from engine.assignment.flow import wants_owner, with_owner
    from engine.core.model import Action

    assigner = Assigner(redis_client, roster(rep("a", capacity=1)), clock=clock)
    alert = Action(
        action_id="act_1", rule="hot-lead", rule_version="1", lead_id="ada", fired_at_ms=0, trigger=(),
        connector="slack", explanation="pricing x3", template="hot_lead", marketing=False,
        context={"traits": {"name": "Ada"}, "stage": "MQL"},
    )  # fmt: skip
    assert wants_owner(alert)
    assert not wants_owner(
        Action.from_json({**alert.to_json(), "template": "cart_reminder", "marketing": True})
    )
    owned, assignment = await with_owner(assigner, alert)
    assert assignment.created and owned.action_id == alert.action_id
    assert owned.context["owner"] == {"id": "a", "name": "A", "email": "a@example.com", "slack_id": "UA"}
    assert owned.payload["mention"] == "<@UA>" and owned.payload["ack_path"] == "/v1/leads/ada/ack"
    again, second = await with_owner(assigner, alert)
    assert not second.created and again == owned
    stored = await assigner.lead_of("ada")
    assert stored["explanation"] == "pricing x3" and stored["alert"]["action_id"] == "act_1"
    other = Action.from_json({**alert.to_json(), "lead_id": "bob"})
    queued, none = await with_owner(assigner, other)  # a is at capacity: delivered without an owner, queued
    assert none is None and queued.action_id == other.action_id and "owner" not in queued.context
    assert queued.payload["queued"] == {"lead_id": "bob", "position": 1, "queued_at_ms": int(clock() * 1000)}
    again_queued, _ = await with_owner(assigner, other)  # a repeated alert keeps its place
    assert again_queued.payload["queued"]["position"] == 1 and await assigner.store.queue_length() == 1


async def test_with_owner_carries_signed_links_when_configured(redis_client, clock: ManualClock):
    from engine.assignment.flow import with_owner
    from engine.assignment.links import RepLinks
    from engine.core.model import Action

    links = RepLinks(b"k" * 32, "https://reps.example.com", 600, clock=clock)
    assigner = Assigner(redis_client, roster(rep("a")), clock=clock, links=links)
    alert = Action(
        action_id="act_2", rule="hot-lead", rule_version="1", lead_id="ada", fired_at_ms=0, trigger=(),
        connector="slack", explanation="pricing x3", template="hot_lead", marketing=False, context={},
    )  # fmt: skip
    owned, _ = await with_owner(assigner, alert)
    ack, passing = owned.payload["links"]["ack"], owned.payload["links"]["pass"]
    assert ack.startswith("https://reps.example.com/links/ack?lead=ada&rep=a&exp=")
    assert passing.startswith("https://reps.example.com/links/pass?")
    assert owned.payload["links"]["inbox"] == "https://reps.example.com/inbox"


async def test_a_slot_freed_while_the_queue_drains_goes_to_the_head_not_to_a_later_lead(
    redis_client, clock: ManualClock
):
    """Seen once in CI: the head found nobody free, a release freed a slot, and the next lead in the queue took it
    while the head kept waiting. The drain stops at the first lead nobody can take; the next one starts at the head."""
    assigner = Assigner(redis_client, roster(rep("a", capacity=1)), clock=clock)
    assert (await assigner.assign("first", {})).rep_id == "a"
    for lead_id, score in (("head", 90), ("later", 10)):
        clock.advance(1)
        assert (await assigner.assign_or_queue(lead_id, {"score": score})).created
    snapshot = assigner.store.snapshot

    async def snapshot_then_release(lead_id: str):  # another process frees a's slot just after the head's check
        taken = await snapshot(lead_id)
        if lead_id == "head":
            await assigner.release("first", by="dispatcher")
        return taken

    assigner.store.snapshot = snapshot_then_release  # type: ignore[method-assign]
    assert await assigner.drain_queue() == []
    assigner.store.snapshot = snapshot  # type: ignore[method-assign]
    assert await assigner.owner("later") is None, "a later lead jumped the queue"
    assert [a.lead_id for a in await assigner.drain_queue()] == ["head"]
