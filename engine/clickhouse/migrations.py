"""Apply the schema migrations (engine/clickhouse/schema.py) at start-up; idempotent, safe to run concurrently."""

from __future__ import annotations

import logging
import re

from clickhouse_connect.driver.client import Client

from engine.clickhouse.schema import MIGRATIONS, MIGRATIONS_TABLE, RETENTION_TTL, Migration

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


def _days(value: float) -> int:
    return max(1, round(value))


def retention_statements(client: Client, events_days: float, actions_days: float) -> list[str]:
    """The `ALTER TABLE ... MODIFY TTL` statements that bring the tables' TTLs to the configured retention (none
    when they already match), read from `system.tables`."""
    wanted = {
        "events": RETENTION_TTL["events"].format(days=_days(events_days)),
        "actions": RETENTION_TTL["actions"].format(days=_days(actions_days)),
        "lead_updates": RETENTION_TTL["lead_updates"].format(days=_days(actions_days)),
    }
    rows = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() AND name IN "
        "('events', 'actions', 'lead_updates')"
    ).result_rows
    current = {str(name): str(engine) for name, engine in rows}
    statements = []
    for table, ttl in wanted.items():
        if table in current and _ttl_days(current[table]) != int(ttl.rsplit("INTERVAL ", 1)[1].split()[0]):
            statements.append(f"ALTER TABLE {table} MODIFY TTL {ttl}")
    return statements


def _ttl_days(engine_full: str) -> int | None:
    """The days of a table's TTL from its `engine_full` (`... TTL toDateTime(at) + toIntervalDay(730) ...`)."""
    found = re.search(r" TTL .*?toIntervalDay\((\d+)\)", engine_full)
    return int(found.group(1)) if found else None


def apply_retention(client: Client, events_days: float, actions_days: float) -> list[str]:
    """Set the TTLs of `events` (`events_days`) and of `actions` and `lead_updates` (`actions_days`) when they
    differ, and return the statements run. ClickHouse then drops the rows past the new TTL in the background
    (`materialize_ttl_after_modify`, on by default). Idempotent; raises the client's errors."""
    statements = retention_statements(client, events_days, actions_days)
    for statement in statements:
        log.info("applying retention: %s", statement)
        client.command(statement)
    return statements
