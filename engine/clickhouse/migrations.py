"""Apply the schema migrations (engine/clickhouse/schema.py) at start-up; idempotent, safe to run concurrently."""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from engine.clickhouse.schema import MIGRATIONS, MIGRATIONS_TABLE, Migration

log = logging.getLogger(__name__)


def _ensure_bookkeeping(client: Client) -> None:
    client.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
        " version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        ") ENGINE = ReplacingMergeTree ORDER BY version"
    )


def applied_versions(client: Client) -> set[int]:
    """Versions recorded as applied (creates the bookkeeping table when missing)."""
    _ensure_bookkeeping(client)
    return {int(row[0]) for row in client.query(f"SELECT version FROM {MIGRATIONS_TABLE} FINAL").result_rows}


def migrate(client: Client, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply every migration whose version is not recorded yet, in version order, record each afterwards and
    return the versions applied. Each statement is idempotent, so a process that dies between a statement and the
    record reapplies it next time; two processes migrating at once end in the same schema (the bookkeeping table
    is a ReplacingMergeTree keyed by version). Raises the client's errors."""
    done = applied_versions(client)
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        log.info("applying ClickHouse migration %d: %s", migration.version, migration.name)
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            MIGRATIONS_TABLE, [[migration.version, migration.name]], column_names=["version", "name"]
        )
        applied.append(migration.version)
    return applied
