"""`nudge demo` end to end on a tiny sample: real stack, worker, dispatcher, sink, receivers, ClickHouse
summary.

The full demo (`make demo`) takes about two minutes; this runs the same command on four leads with a 2-second
abandonment rule, as a subprocess (chDB allows one store per process, and the demo opens one for its summary).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from engine.devstack import DevStack, StackInfo
from engine.events import format_ts
from engine.testing import nudge_command
from tests.integration.worker_process import cart_abandoned

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

RULES = "rules:\n" + cart_abandoned()


def _event(lead: str, name: str, at_ms: int) -> bytes:
    doc = {"type": "track", "event": name, "userId": lead, "timestamp": format_ts(at_ms)}
    return orjson.dumps({**doc, "messageId": f"{lead}-{name}"})


def test_demo_replays_fires_delivers_and_summarises(stack: StackInfo, tmp_path: Path) -> None:
    t0 = 1_700_000_000_000  # recorded time; the demo shifts it to now
    lines = [
        _event("ann", "Product Added", t0),
        _event("bob", "Product Added", t0 + 100),
        _event("cy", "Product Added", t0 + 200),
        b"{broken",
        _event("cy", "Order Completed", t0 + 600),
        _event("dee", "Product Viewed", t0 + 900),
    ]
    sample = tmp_path / "sample.jsonl.gz"
    sample.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "demo.yaml").write_text(RULES)

    started = time.monotonic()
    result = subprocess.run(
        [*nudge_command(), "demo", "--root", str(stack.root), "--sample", str(sample), "--rules", str(rules)],
        capture_output=True, text=True, timeout=140, env=dict(os.environ),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Dev stack reused" in out
    assert out.count("cart_abandoned") >= 2 and " ann " in out and " bob " in out, out
    summary = out[out.index("Summary, read back from ClickHouse"):]
    assert re.search(r"events stored +5 +from 4 leads", summary), summary
    assert re.search(r"actions fired +2\n +cart_abandoned +2\n", summary), summary
    assert "delivery outcomes      sent 2\n" in summary, summary
    assert re.search(r"dead letters +1\n", summary), summary
    assert re.search(r"median detection delay +\d+\.\d\d s", summary), summary
    assert time.monotonic() - started < 120
    # The demo stops what it started and leaves the stack it reused running.
    assert DevStack(stack.root).info() == stack
    assert _processes_with_env(f"NUDGE_STATE_DIR={(stack.root / 'demo' / 'state').resolve()}") == []


def _processes_with_env(entry: str) -> list[int]:
    """Pids whose environment holds `entry`: the demo's children carry their run's state dir."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found
