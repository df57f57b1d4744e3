"""Two OS processes assign the same 1,000 leads at once against real Redis.

Acceptance: every lead has exactly one owner (both processes agree on it), round-robin counts differ by at
most one among the reps that stay eligible, and away / out-of-hours / full reps never get a lead.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from engine.assignment.store import PREFIX

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LEADS = [f"lead-{i:04d}" for i in range(1000)]
OPEN = ["r1", "r2", "r3", "r4", "r5"]  # always eligible, room for every lead
CAPPED = "capped"  # eligible until it holds 7 leads

ROSTER = f"""
strategy: round_robin
reps:
  - {{id: r1, name: R1, email: r1@example.com, capacity: 1000}}
  - {{id: away, name: Away, email: away@example.com, available: false, capacity: 1000}}
  - {{id: r2, name: R2, email: r2@example.com, capacity: 1000}}
  - {{id: tokyo, name: Tokyo, email: tokyo@example.com, capacity: 1000, timezone: Asia/Tokyo,
      working_hours: {{days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}}}}
  - {{id: r3, name: R3, email: r3@example.com, capacity: 1000}}
  - {{id: full, name: Full, email: full@example.com, capacity: 0}}
  - {{id: {CAPPED}, name: Capped, email: capped@example.com, capacity: 7}}
  - {{id: r4, name: R4, email: r4@example.com, capacity: 1000, timezone: Europe/Paris,
      working_hours: {{start: "09:00", end: "18:00"}}}}
  - {{id: r5, name: R5, email: r5@example.com, capacity: 1000}}
  - {{id: paused, name: Paused, email: paused@example.com, capacity: 1000}}
"""


def run_two_processes(
    redis_url: str, roster_path: Path, lead_sets: list[list[str]], strategy: str = "round_robin"
) -> list[dict]:
    from tests.assignment.conftest import WEDNESDAY_NOON_UTC

    start_at = time.time() + 1.5  # both interpreters are up and connected by then
    procs = []
    for leads in lead_sets:
        spec = {
            "redis_url": redis_url,
            "roster": str(roster_path),
            "leads": leads,
            "start_at": start_at,
            "now_s": WEDNESDAY_NOON_UTC,
            "concurrency": 8,
            "strategy": strategy,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.assignment.concurrent_worker", orjson.dumps(spec).decode()],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(orjson.loads(out.splitlines()[-1]))
    return results


def check_state(redis_url: str, results: list[dict]) -> Counter:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = {lead: client.hget(f"{PREFIX}owner:{lead}", "rep") for lead in LEADS}
        totals = {k: int(v) for k, v in client.hgetall(f"{PREFIX}totals").items()}
        loads = {k: int(v) for k, v in client.hgetall(f"{PREFIX}loads").items()}
    finally:
        client.close()
    # exactly one owner per lead, and every process was told that same owner
    assert all(stored[lead] for lead in LEADS)
    for result in results:
        for lead, rep in result["owners"].items():
            assert rep == stored[lead], f"{lead}: process saw {rep}, Redis holds {stored[lead]}"
    counts = Counter(stored.values())
    assert totals == dict(counts) == loads  # nothing assigned twice, loads never drifted
    assert sum(counts.values()) == len(LEADS)
    # away (roster), paused (set away at run time), off hours and full reps never got a lead
    assert not {"away", "paused", "tokyo", "full"} & set(counts)
    assert counts[CAPPED] == 7  # filled up to capacity, never beyond
    open_counts = [counts[r] for r in OPEN]
    assert max(open_counts) - min(open_counts) <= 1, counts
    return counts


@pytest.fixture
def roster_path(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "reps.yaml"
    path.write_text(ROSTER)
    client = redis.Redis.from_url(redis_url)
    client.hset(f"{PREFIX}availability", "paused", "away")  # the run-time override, as the CLI/HTTP set it
    client.close()
    return path


def test_two_processes_both_try_every_lead(redis_url: str, roster_path: Path):
    results = run_two_processes(redis_url, roster_path, [LEADS, list(reversed(LEADS))])
    counts = check_state(redis_url, results)
    print(f"both-all: counts={dict(counts)} retries={[r['retries'] for r in results]} "
          f"seconds={[round(r['seconds'], 2) for r in results]}")  # fmt: skip


@pytest.mark.parametrize("strategy", ["round_robin", "least_loaded"])
def test_two_processes_split_the_leads_interleaved(redis_url: str, roster_path: Path, strategy: str):
    results = run_two_processes(redis_url, roster_path, [LEADS[0::2], LEADS[1::2]], strategy)
    counts = check_state(redis_url, results)
    print(f"interleaved {strategy}: counts={dict(counts)} retries={[r['retries'] for r in results]} "
          f"seconds={[round(r['seconds'], 2) for r in results]}")  # fmt: skip
