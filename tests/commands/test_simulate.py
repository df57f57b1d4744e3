"""`nudge simulate`: JSONL in, one action per line out, ordered by fired_at, byte-identical on re-runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]


def pricing_view(message_id: str, timestamp: str) -> dict:
    """u2 looks at the pricing page."""
    return {
        "type": "page", "userId": "u2", "messageId": message_id, "timestamp": timestamp,
        "properties": {"path": "/pricing"},
    }


EVENTS = [
    {
        "type": "track",
        "event": "Product Added",
        "userId": "u1",
        "messageId": "a1",
        "timestamp": "2026-01-05T10:00:00Z",
        "properties": {"product_id": "p1", "price": 20},
    },
    pricing_view("p1", "2026-01-05T10:00:00Z"),
    pricing_view("p2", "2026-01-05T10:01:00Z"),
    pricing_view("p3", "2026-01-05T10:02:00+01:00"),  # 09:02 UTC
    pricing_view("p4", "2026-01-05T10:03:00Z"),
]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps(e) for e in EVENTS]
    lines.insert(2, b"{not json")
    lines.insert(4, b'{"type": "track", "userId": "u9", "timestamp": "2026-01-05T10:00:00Z"}')
    lines.append(b"")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_actions_are_printed_one_per_line_ordered_by_fired_at(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--rules", str(REPO / "rules"), "--events", str(events_file)]) == 0
    out, err = capsys.readouterr()
    actions = [orjson.loads(line) for line in out.splitlines()]
    assert [(a["rule"], a["lead_id"], a["fired_at"]) for a in actions] == [
        ("pricing_hot_lead", "u2", "2026-01-05T10:03:00.000Z"),  # p3 is 09:02Z: outside the 10-minute window
        ("cart_abandoned", "u1", "2026-01-05T10:30:00.000Z"),
    ]
    assert actions[0]["trigger"] == ["p1", "p2", "p4"]
    for action in actions:
        assert {"action_id", "rule", "lead_id", "fired_at", "trigger", "connector", "explanation"} <= set(action)
    assert f"{events_file}:3: not_json:" in err
    assert f"{events_file}:5: missing_event_name:" in err


def test_no_flush_leaves_pending_deadlines_unfired(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--rules", str(REPO / "rules"), "--events", str(events_file), "--no-flush"]) == 0
    rules = [orjson.loads(line)["rule"] for line in capsys.readouterr().out.splitlines()]
    assert rules == ["pricing_hot_lead"]


def test_invalid_rules_exit_2(tmp_path: Path, events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: a, kind: absence, within: 5x, action: {connector: log}}\n")
    assert main(["simulate", "--rules", str(bad), "--events", str(events_file)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_output_is_byte_identical_across_processes(events_file: Path) -> None:
    def run(seed: str) -> bytes:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        cmd = [
            sys.executable,
            "-m",
            "engine.cli",
            "simulate",
            "--rules",
            str(REPO / "rules"),
            "--events",
            str(events_file),
        ]
        return subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=REPO).stdout

    first = run("1")
    assert first and first == run("2")
