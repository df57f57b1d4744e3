"""The dev stack starts real services on free loopback ports, is idempotent, reports status and cleans up."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from engine import devstack
from engine.devstack import DevStack, DevStackError, pid_alive

pytestmark = pytest.mark.integration


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_up_is_idempotent_and_down_stops_everything(tmp_path: Path) -> None:
    stack = DevStack(tmp_path / "stack")
    info = stack.up()
    try:
        assert _answers(info.broker_port)
        client = redis.Redis.from_url(info.redis_url)
        assert client.ping()
        client.close()
        assert stack.up() == info, "a second `up` must reuse the running services"
        status = stack.status()
        assert status["broker"] == {"port": info.broker_port, "running": True}
        assert status["redis"] == {"port": info.redis_port, "running": True}
        env_file = (tmp_path / "stack" / "env").read_text()
        assert f"export NUDGE_BROKER_URL={info.broker_url}" in env_file
        assert "export NUDGE_BROKER_PROFILE=dev" in env_file
        assert info.clickhouse_dsn.startswith("chdb:///")
        pids = stack.pids
    finally:
        stack.down()
    assert set(pids) == {"broker", "redis"}
    assert not pid_alive(pids["broker"]) and not pid_alive(pids["redis"])
    assert not _answers(info.broker_port)
    assert stack.info() is None
    assert stack.status()["broker"]["running"] is False


def test_missing_redis_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack.shutil, "which", lambda name: None)
    stack = DevStack(tmp_path / "stack")
    with pytest.raises(DevStackError, match=r"redis-server not found.*apt-get install"):
        stack.up()
    # The broker started before Redis failed must not be left running.
    assert stack.info() is None
    stack.down()
