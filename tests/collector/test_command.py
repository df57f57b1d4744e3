"""`nudge collector` as operators run it: settings from NUDGE_* variables, refuses to start without keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from engine.config import Settings
from engine.devstack import free_port

from .test_bad_input import auth, post, track

pytestmark = pytest.mark.integration

NUDGE = str(Path(sys.executable).with_name("nudge"))


def test_nudge_collector_serves_from_env_settings(collector_settings: Settings, read_clickstream) -> None:
    settings = collector_settings.with_(collector_port=free_port())
    proc = subprocess.Popen(
        [NUDGE, "collector"],
        env={**os.environ, **settings.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{settings.collector_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        assert post(url, "/v1/track", track("cli-1"), auth()).json() == {"success": True}
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0, output
    assert "nudge collector listening on" in output
    assert [r.value["messageId"] for r in read_clickstream(1)] == ["cli-1"]


def test_nudge_collector_without_write_keys_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUDGE_WRITE_KEYS"}
    done = subprocess.run([NUDGE, "collector"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "NUDGE_WRITE_KEYS" in done.stderr
