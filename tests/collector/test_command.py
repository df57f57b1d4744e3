"""`nudge collector` as operators run it: settings from NUDGE_* variables, refuses to start without keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
import requests

from engine.config import Settings
from engine.devstack import free_port
from engine.testing import ChildProcess, nudge_command

from .conftest import WRITE_KEY
from .test_bad_input import auth, post, track

pytestmark = pytest.mark.integration


def test_nudge_collector_serves_from_env_settings(
    collector_settings: Settings, read_clickstream, tmp_path: Path
) -> None:
    settings = collector_settings.with_(collector_port=free_port())
    url = f"http://127.0.0.1:{settings.collector_port}"

    def healthy() -> bool:
        try:
            return requests.get(url + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    env = {**os.environ, **settings.env()}
    collector = ChildProcess.nudge("nudge collector", ["collector"], env, tmp_path / "collector.log")
    with collector.start():
        asyncio.run(collector.wait_until(healthy, timeout_s=20, what="/healthz"))
        assert post(url, "/v1/track", track("cli-1"), auth()).json() == {"success": True}
        assert collector.stop() == 0, collector.log_text()
    assert "nudge collector listening on" in collector.log_text()
    assert [r.value["messageId"] for r in read_clickstream(1)] == ["cli-1"]


def test_nudge_collector_without_write_keys_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUDGE_WRITE_KEYS"}
    done = subprocess.run([*nudge_command(), "collector"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "NUDGE_WRITE_KEYS" in done.stderr


@pytest.mark.parametrize(
    ("name", "value"), [("NUDGE_COLLECTOR_BODY_TIMEOUT_S", "0"), ("NUDGE_MAX_CLOCK_SKEW_S", "-1")]
)
def test_nudge_collector_with_an_unusable_time_bound_exits_2(name: str, value: str) -> None:
    env = {**os.environ, "NUDGE_WRITE_KEYS": "k", name: value}
    done = subprocess.run([*nudge_command(), "collector"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert name in done.stderr


def test_the_access_log_carries_no_addresses_urls_or_referers(
    collector_settings: Settings, read_clickstream, tmp_path: Path
) -> None:
    """At debug level one line per request (method, route, status, size, time); at info level none."""
    for level, lines_expected in (("debug", True), ("info", False)):
        settings = collector_settings.with_(collector_port=free_port(), log_level=level)
        url = f"http://127.0.0.1:{settings.collector_port}"
        log = tmp_path / f"collector-{level}.log"
        collector = ChildProcess.nudge("nudge collector", ["collector"], {**os.environ, **settings.env()}, log)

        def healthy(url: str = url) -> bool:
            try:
                return requests.get(url + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        with collector.start():
            asyncio.run(collector.wait_until(healthy, timeout_s=20, what="/healthz"))
            headers = {**auth(), "Referer": "https://shop.example/account?email=ann%40example.com",
                       "User-Agent": "Secret-Agent/1", "X-Forwarded-For": "203.0.113.7"}
            response = requests.post(url + "/v1/track?email=ann@example.com", json=track(f"log-{level}"),
                                     headers=headers, timeout=5)
            assert response.status_code == 200
            requests.get(f"{url}/v1/projects/{WRITE_KEY}/settings", timeout=5)
            assert collector.stop() == 0, collector.log_text()
        text = collector.log_text()
        for secret in ("ann", "example.com", "Secret-Agent", "203.0.113.7", "127.0.0.1 ", WRITE_KEY):
            assert secret not in text.replace("listening on http://127.0.0.1", ""), (level, secret, text)
        assert ("POST track 200" in text) is lines_expected, text
        assert ("GET settings 200" in text) is lines_expected, text
