"""Passwords inside service URLs never reach a message: the commands that report an unreachable Redis or
ClickHouse print the URL through `engine.config.redact_url`. Run as the operator would, against ports where
nothing listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.devstack import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "never-print-me-8c31"


def run_nudge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def dead_urls() -> dict[str, str]:
    port = free_port()  # nothing listens there
    return {
        "NUDGE_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{port}/0",
        "NUDGE_CLICKHOUSE_DSN": f"http://nudge:{SECRET}@127.0.0.1:{port}/nudge",
        "NUDGE_REPS_PATH": str(ROOT / "reps.yaml"),
    }


def test_reps_list_with_redis_down(dead_urls: dict[str, str]) -> None:
    result = run_nudge("reps", "list", env=dead_urls)
    assert result.returncode == 1
    assert "redis://:***@127.0.0.1" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_leads_show_with_redis_and_clickhouse_down(dead_urls: dict[str, str]) -> None:
    result = run_nudge("leads", "show", "lead-1", env=dead_urls)
    output = result.stdout + result.stderr
    assert "redis://:***@127.0.0.1" in output and "http://nudge:***@127.0.0.1" in output
    assert SECRET not in output
