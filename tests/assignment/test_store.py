"""The Lua commit rejects every kind of stale choice (deterministic, one client interleaving by hand)."""

from __future__ import annotations

import pytest

from engine.assignment.store import AssignmentStore

pytestmark = pytest.mark.integration


def commit(store: AssignmentStore, lead: str, rep: str, **overrides):
    args = {
        "rep_id": rep,
        "capacity": 10,
        "cursor_pool": "round_robin",
        "expected_cursor": None,
        "expected_version": None,
        "previous_rep": None,
        "deadline_ms": 1_000,
        "history_entry": {"event": "assigned", "rep": rep},
        "fields": {"rep": rep, "strategy": "round_robin", "assigned_at_ms": 0},
    }
    return store.commit(lead, **{**args, **overrides})


async def test_stale_choices_are_rejected_and_change_nothing(redis_client):
    store = AssignmentStore(redis_client)
    before = await store.snapshot("l1")
    assert (await commit(store, "l1", "a")).status == "ok"
    # a second process decided on the same (old) snapshot: the lead is owned now
    result = await commit(store, "l1", "b", expected_cursor=before.cursors.get("round_robin"))
    assert (result.status, result.detail) == ("owned", "a")
    # another lead, chosen from the old snapshot: the rotation moved meanwhile
    result = await commit(store, "l2", "b", expected_cursor=before.cursors.get("round_robin"))
    assert (result.status, result.detail) == ("conflict", "cursor")
    # a load-based choice after any change of loads
    result = await commit(store, "l2", "b", cursor_pool=None, expected_version=before.version)
    assert (result.status, result.detail) == ("conflict", "version")
    # the rep went away after the snapshot
    await store.set_availability("b", False)
    result = await commit(store, "l2", "b", cursor_pool=None)
    assert (result.status, result.detail) == ("conflict", "away")
    # the rep is full
    result = await commit(store, "l2", "a", cursor_pool=None, capacity=1)
    assert (result.status, result.detail) == ("conflict", "full")
    # a reassignment that expects an owner the lead no longer has
    result = await commit(store, "l1", "c", cursor_pool=None, previous_rep="z")
    assert (result.status, result.detail) == ("moved", "a")
    assert await store.loads() == {"a": 1}
    assert await store.owner("l2") == {}
    assert [h["rep"] for h in await store.history("l1")] == ["a"]
