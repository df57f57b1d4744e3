"""A lead's rows out of every ClickHouse table (engine/clickhouse/erasure.py), on chDB: events of every merged id
(found through stored identify/alias events too), actions, lead updates, dead letters naming it by key, raw bytes
or email; the receipt keeps the keyed hash only; retention TTLs follow the settings (a migration when changed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from engine.clickhouse import merged_history
from engine.clickhouse.client import connect
from engine.clickhouse.erasure import erase_rows, write_receipt
from engine.clickhouse.migrations import apply_retention, migrate, retention_statements
from engine.clickhouse.rows import COLUMNS, Record, to_row
from engine.core.model import Action
from engine.privacy.records import DeleteOrder

NOW = int(time.time() * 1000) - 60_000


@pytest.fixture
def client() -> Iterator[Client]:
    store = connect("chdb://memory")
    migrate(store)
    try:
        yield store
    finally:
        store.close()


def insert(client: Client, kind: str, docs: list[dict[str, Any]]) -> None:
    by_table: dict[str, list[list[Any]]] = {}
    for n, doc in enumerate(docs):
        table, row = to_row(Record(kind, 0, n, NOW, None, orjson.dumps(doc)))
        by_table.setdefault(table, []).append(row)
    for table, rows in by_table.items():
        client.insert(table, rows, column_names=COLUMNS[table])


def event(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "messageId": message_id, "timestamp": NOW, **fields}


def action(lead: str, n: int) -> dict[str, Any]:
    return Action(f"act-{lead}-{n}", "cart", "v1", lead, NOW, ("m",), "email", "why").to_json()


def populate(client: Client, user: str, anon: str, email: str, n: int) -> None:
    insert(client, "clickstream", [
        event(f"e{n}1", anonymousId=anon),
        event(f"e{n}2", type="identify", userId=user, anonymousId=anon, traits={"email": email}),
        event(f"e{n}3", userId=user),
    ])  # fmt: skip
    insert(client, "actions", [action(user, 1), action(anon, 2)])
    insert(client, "lead-updates", [{"lead_id": user, "kind": "stage", "at_ms": NOW, "stage": "sql"}])
    insert(client, "dead-letters", [
        {"source": "worker", "reason": "bad_timestamp", "payload": orjson.dumps(event("x", userId=user)).decode(),
         "key": user, "at_ms": NOW},
        {"source": "collector", "reason": "other", "payload": f"contact {email} later", "key": "", "at_ms": NOW},
    ])  # fmt: skip


def dump(client: Client) -> str:
    names = client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    return "\n".join(repr(client.query(f"SELECT * FROM {name}").result_rows) for (name,) in names)


def test_every_row_of_the_lead_goes_and_the_other_lead_stays(client: Client) -> None:
    populate(client, "user-gone", "anon-gone", "gone@example.com", 1)
    populate(client, "user-kept", "anon-kept", "kept@example.com", 2)
    assert merged_history.merged_ids(client, "user-gone") == ["user-gone", "anon-gone"]
    history = merged_history.events(client, ["user-gone", "anon-gone"])
    assert [e["message_id"] for e in history] == ["e11", "e12", "e13"]
    # The collector's merge record may have expired: the stored identify still finds the anonymous id.
    erased = erase_rows(client, ["user-gone"], ["gone@example.com"])
    assert erased.ids == ("user-gone", "anon-gone")
    assert erased.counts == {"events": 3, "actions": 2, "lead_updates": 1, "dead_letters": 2}
    assert sorted(erased.action_ids) == ["act-anon-gone-2", "act-user-gone-1"]
    write_receipt(client, DeleteOrder("req_1", "Delete", erased.ids, "hash-of-id", NOW), erased.counts)
    text = dump(client)
    assert "gone" not in text, text
    assert "user-kept" in text and "kept@example.com" in text and "hash-of-id" in text
    again = erase_rows(client, ["user-gone"], [])
    assert sum(again.counts.values()) == 0


def test_retention_follows_the_settings(client: Client) -> None:
    assert retention_statements(client, 400, 730) == []  # the migrations' defaults
    assert apply_retention(client, 30, 90) == [
        "ALTER TABLE events MODIFY TTL toDateTime(timestamp) + INTERVAL 30 DAY",
        "ALTER TABLE actions MODIFY TTL toDateTime(at) + INTERVAL 90 DAY",
        "ALTER TABLE lead_updates MODIFY TTL toDateTime(at) + INTERVAL 90 DAY",
    ]
    assert retention_statements(client, 30, 90) == []
    engine = client.query("SELECT engine_full FROM system.tables WHERE name = 'events'").result_rows[0][0]
    assert "toIntervalDay(30)" in engine
