"""A lead's rows out of every table, and the erasure receipt: run by the sink (the one process that owns an
embedded store) on a `DeleteOrder` from the privacy coordinator (`engine.privacy.records`).

Deletes are `ALTER TABLE ... DELETE ... SETTINGS mutations_sync = 2`: supported alike by chDB and a ClickHouse
server (replicated tables too), and unlike a lightweight `DELETE FROM`, which only masks rows until a merge, the
mutation rewrites the parts, so the bytes are gone from disk once the old parts are cleaned up (ClickHouse's
`old_parts_lifetime`, 8 minutes by default). Slow on a large table (it rewrites every part holding a matching
row), which is acceptable for a request that comes rarely and completes asynchronously.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from clickhouse_connect.driver.client import Client

from engine.privacy.records import DeleteOrder

MAX_IDS = 1000  # the merges of one person; more is a merge gone wrong, not a person
EXPANSION_ROUNDS = 5
SHORT_ID = 6  # ids shorter than this are searched in raw bytes only as a quoted JSON string, never bare
RECEIPTS_TABLE = "privacy_receipts"
MUTATION_SETTINGS = {"mutations_sync": 2}


@dataclass(frozen=True)
class Erased:
    """What `erase_rows` removed: rows per table, the ids it covered, the lead's action ids."""

    counts: dict[str, int]
    ids: tuple[str, ...]
    action_ids: tuple[str, ...]


def expand_ids(client: Client, ids: Sequence[str]) -> list[str]:
    """`ids` plus every id the stored identify and alias events merged with them (the collector's merge records
    expire; the events may still be there), to a fixed point, at most `MAX_IDS`."""
    known = list(dict.fromkeys(ids))
    for _ in range(EXPANSION_ROUNDS):
        rows = client.query(
            "SELECT DISTINCT arrayJoin([lead_id, user_id, anonymous_id, previous_id]) AS id FROM events "
            "WHERE type IN ('identify', 'alias') AND (lead_id IN {ids:Array(String)} OR user_id IN {ids:Array(String)}"
            " OR anonymous_id IN {ids:Array(String)} OR previous_id IN {ids:Array(String)}) AND id != ''",
            parameters={"ids": known},
        ).result_rows
        found = [str(row[0]) for row in rows if str(row[0]) not in known]
        if not found:
            break
        known += found[: MAX_IDS - len(known)]
        if len(known) >= MAX_IDS:
            break
    return known


def needles(ids: Sequence[str], terms: Sequence[str]) -> list[str]:
    """What raw bytes that name the lead contain: each id as a JSON string (`"u-1"`), longer ids and the email
    addresses also bare (a key, a non-JSON payload)."""
    out = [orjson.dumps(i).decode() for i in ids]
    out += [i for i in ids if len(i) >= SHORT_ID]
    out += [t for t in terms if t]
    return list(dict.fromkeys(out))


def _conditions(ids: Sequence[str], search: Sequence[str]) -> dict[str, tuple[str, dict[str, object]]]:
    """Per table, the WHERE clause that finds the lead's rows, and its parameters."""
    by_id: dict[str, object] = {"ids": list(ids)}
    searched: dict[str, object] = {"ids": list(ids), "needles": list(search)}
    return {
        "events": (
            "lead_id IN {ids:Array(String)} OR user_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)}"
            " OR previous_id IN {ids:Array(String)}",
            by_id,
        ),
        "actions": ("lead_id IN {ids:Array(String)}", by_id),
        "lead_updates": (
            "lead_id IN {ids:Array(String)} OR multiSearchAny(payload, {needles:Array(String)})",
            searched,
        ),
        "dead_letters": (
            "original_key IN {ids:Array(String)} OR multiSearchAny(payload, {needles:Array(String)})"
            " OR multiSearchAny(original_key, {needles:Array(String)})",
            searched,
        ),
    }


def erase_rows(client: Client, ids: Sequence[str], terms: Sequence[str] = ()) -> Erased:
    """Delete every row of the lead (all of `ids`, expanded through stored merges) from every table; returns what
    was removed. Idempotent: a second run finds nothing and counts zeros. Blocks until every mutation is done;
    raises the client's errors (the caller retries the whole order)."""
    covered = expand_ids(client, ids)
    search = needles(covered, terms)
    action_ids = tuple(
        str(row[0])
        for row in client.query(
            "SELECT DISTINCT action_id FROM actions WHERE lead_id IN {ids:Array(String)}", parameters={"ids": covered}
        ).result_rows
    )
    counts: dict[str, int] = {}
    for table, (where, parameters) in _conditions(covered, search).items():
        # multiSearchAny takes at most 255 needles: search in chunks, one mutation per chunk.
        chunks = [search[i : i + 200] for i in range(0, len(search), 200)] or [[]]
        removed = 0
        for chunk in chunks:
            params = {**parameters, "needles": chunk} if "needles" in parameters else parameters
            found = int(client.query(f"SELECT count() FROM {table} WHERE {where}", parameters=params).result_rows[0][0])
            if found:
                client.command(
                    f"ALTER TABLE {table} DELETE WHERE {where}", parameters=params, settings=MUTATION_SETTINGS
                )
            removed += found
        counts[table] = removed
    return Erased(counts, tuple(covered), action_ids)


def write_receipt(client: Client, order: DeleteOrder, clickhouse_counts: dict[str, int]) -> None:
    """The audit trail of one erasure: request id, type, the keyed hash of the named id (never the id), when it
    was requested and completed, and what every store removed. Written once per request id (the table is a
    ReplacingMergeTree keyed by it: a re-run order replaces the row)."""
    counts = {**order.counts, "clickhouse": clickhouse_counts}
    client.insert(
        RECEIPTS_TABLE,
        [
            [
                order.request_id,
                order.request_type,
                order.subject_hash,
                order.requested_at_ms,
                int(time.time() * 1000),
                order.reason,
                orjson.dumps(counts, option=orjson.OPT_SORT_KEYS).decode(),
            ]
        ],
        column_names=["request_id", "type", "subject_hash", "requested_at", "completed_at", "reason", "counts"],
    )
