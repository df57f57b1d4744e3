"""One place that turns a DSN into a ClickHouse client, the same API for chDB (embedded) and a ClickHouse
server.

Accepted DSNs:
- `chdb:///abs/path` — embedded chDB with its data in that directory (persistent). One process owns a path;
  a second process opening it fails with "Cannot lock file", which `connect` turns into a
  `ClickHouseUnavailable` that says so.
- `chdb://memory` — embedded, in memory (tests, throw-away runs).
- `http(s)://user:pass@host:8123/db` — a ClickHouse server over HTTP(S) (production).

Contract: `connect(dsn)` returns a connected synchronous `clickhouse_connect` client or raises
`ClickHouseUnavailable` (server unreachable, path locked) / `ConfigError` (a DSN Nudge does not understand).
The client is synchronous: async callers go through `asyncio.to_thread` (chDB has no async client).

chDB allows one engine path per *process* as well: opening a second path while a client on the first is open
raises. Close clients (`client.close()`) before switching paths.
"""

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
    """A connected client for `dsn`; ClickHouse settings (e.g. `max_execution_time`) as keywords."""
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
