"""chDB store basics: DSN handling, idempotent migrations, insert dedup tokens (measured, not assumed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.clickhouse.client import ClickHouseUnavailable, connect, redact
from engine.clickhouse.migrations import applied_versions, migrate
from engine.clickhouse.schema import MIGRATIONS
from engine.config import ConfigError


@pytest.mark.parametrize("dsn", ["mysql://x", "chdb://relative/path", "chdb:relative", "postgres://u:p@h/db"])
def test_bad_dsns_say_what_to_use(dsn: str) -> None:
    with pytest.raises(ConfigError, match="chdb"):
        connect(dsn)


def test_redact_hides_password() -> None:
    assert redact("https://nudge:s3cret@ch.example:8443/nudge") == "https://nudge:***@ch.example:8443/nudge"


def test_migrations_are_idempotent_and_dedup_tokens_work(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    client = connect(dsn)
    try:
        assert migrate(client) == [m.version for m in MIGRATIONS]
        assert migrate(client) == []
        assert applied_versions(client) == {m.version for m in MIGRATIONS}
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
        assert {"events", "actions", "dead_letters", "lead_updates"} <= tables

        # Same token twice → the second insert is dropped (non_replicated_deduplication_window on the table).
        now_ms = int(time.time() * 1000)  # inside the TTL: expired rows are dropped on insert
        rows = [["l1", now_ms, "k", "", "{}", 0, i] for i in range(5)]
        cols = ["lead_id", "at", "kind", "rep", "payload", "kafka_partition", "kafka_offset"]
        for _ in range(2):
            client.insert(
                "lead_updates", rows, column_names=cols, settings={"insert_deduplication_token": "t1"}
            )
        assert client.query("SELECT count() FROM lead_updates").result_rows[0][0] == 5
        # The store is persistent: another process sees the schema (after we let go of it).
    finally:
        client.close()
    probe = (
        f"from engine.clickhouse.client import connect; c = connect({dsn!r}); "
        "print(c.query('SELECT count() FROM lead_updates').result_rows[0][0]); c.close()"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "5", out.stderr


def test_a_locked_store_is_reported_clearly(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    client = connect(dsn)
    try:
        probe = (
            "import sys\nfrom engine.clickhouse.client import connect, ClickHouseUnavailable\n"
            f"try:\n    connect({dsn!r})\nexcept ClickHouseUnavailable as e:\n    print(e)\n"
        )
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert "owned by another process" in out.stdout, out.stdout + out.stderr
    finally:
        client.close()


def test_unreachable_server_is_unavailable() -> None:
    with pytest.raises(ClickHouseUnavailable, match="cannot connect"):
        connect("http://default:pw@127.0.0.1:9/nudge", connect_timeout=1)
