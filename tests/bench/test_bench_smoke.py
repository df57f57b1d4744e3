"""Smoke test of the benchmark harness (`python -m bench`) on a tiny workload.

Checks that the harness runs end to end against a real dev stack (its own), that every measurement it was
asked for produced figures, and that the results file and table are written. No timing assertions: the
numbers of a tiny run on a shared machine mean nothing (performance is judged by `make bench`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_runs_end_to_end_on_a_tiny_workload(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--events", "1500", "--leads", "400", "--grow-leads", "0",
         "--skip", "naive-tuned,naive-one-write,dev-profile,two-workers", "--latency-seconds", "4", "--out", str(out)],
        cwd=REPO, capture_output=True, timeout=170,
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:] + done.stdout.decode()[-2000:]
    results = orjson.loads(out.read_bytes())
    assert results["errors"] == {}
    m = results["measurements"]
    assert m["raw"]["records"] == 1500
    assert m["naive"]["records"] == 1500
    assert m["worker"]["events"] == results["workload"]["valid_events"]
    assert m["worker"]["dead_letters"] == 12  # the malformed records of the workload
    assert m["worker"]["state"]["active_leads"] > 0
    assert m["latency"]["events_sent"] > 0
    assert "worker_vs_naive (3/2)" in results["ratios"]
    targets = {t["target"] for t in results["targets"]}
    assert {"worker >= 3x naive agent", "state <= 1 KiB per active lead"} <= targets
    assert "Nudge benchmark" in done.stdout.decode()
