"""One place that turns a DSN into a ClickHouse client, the same synchronous API for chDB (embedded) and a
ClickHouse server. Async callers go through `asyncio.to_thread` (chDB has no async client)."""

from __future__ import annotations

from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from engine.config import ConfigError

SCHEMES = ("chdb", "http", "https")


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse cannot be reached or opened now (server down, embedded path owned by another process)."""


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    parsed = urlparse(dsn)
    if parsed.password:
        netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
        return parsed._replace(netloc=netloc).geturl()
    return dsn


def validate_dsn(dsn: str) -> None:
    """Raise `ConfigError` (with the fix) for a DSN `connect` does not accept; no I/O."""
    parsed = urlparse(dsn)
    if parsed.scheme not in SCHEMES:
        raise ConfigError(
            f"NUDGE_CLICKHOUSE_DSN={redact(dsn)!r} has scheme {parsed.scheme!r}; "
            "use chdb:///abs/path, chdb://memory or http(s)://user:pass@host:8123/db"
        )
    if parsed.scheme == "chdb" and not parsed.netloc and not parsed.path.startswith("/"):
        raise ConfigError(
            f"NUDGE_CLICKHOUSE_DSN={dsn!r}: a chDB path must be absolute, e.g. chdb:///var/lib/nudge/ch"
        )
    if parsed.scheme == "chdb" and parsed.netloc not in ("", "memory"):
        raise ConfigError(
            f"NUDGE_CLICKHOUSE_DSN={dsn!r}: use chdb://memory or chdb:///abs/path (three slashes)"
        )


def connect(dsn: str, **settings: object) -> Client:
    """A connected synchronous `clickhouse_connect` client for `dsn`; ClickHouse settings (e.g.
    `max_execution_time`) as keywords.

    DSNs: `chdb:///abs/path` (embedded chDB, persistent in that directory), `chdb://memory` (embedded, in memory:
    tests, throw-away runs), `http(s)://user:pass@host:8123/db` (a ClickHouse server). Raises `ConfigError` for a
    DSN Nudge does not understand and `ClickHouseUnavailable` when the server is unreachable or the store cannot
    be opened: one process owns a chDB path (a second one fails with "Cannot lock file"), and chDB allows one
    engine path per process as well, so close a client (`client.close()`) before switching paths.
    """
    validate_dsn(dsn)
    try:
        return clickhouse_connect.get_client(dsn=dsn, settings=dict(settings) or None)
    except ClickHouseError as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise ClickHouseUnavailable(
                f"the embedded ClickHouse store {redact(dsn)} is owned by another process "
                "(probably `nudge sink`); stop it first, or point NUDGE_CLICKHOUSE_DSN at a ClickHouse server"
            ) from exc
        if "already initialized with path" in text:
            raise ClickHouseUnavailable(
                "this process already has another chDB path open; "
                f"close that client before opening {redact(dsn)}"
            ) from exc
        raise ClickHouseUnavailable(f"cannot connect to ClickHouse at {redact(dsn)}: {text}") from exc
    except OSError as exc:  # connection refused / DNS for HTTP servers
        raise ClickHouseUnavailable(f"cannot connect to ClickHouse at {redact(dsn)}: {exc}") from exc
