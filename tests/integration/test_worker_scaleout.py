"""Two `nudge worker` processes share the partitions (one consumer group): each abandoned cart still fires
exactly once, whichever worker owns the lead, and both serve their own /metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Settings
from engine.kafka.admin import ensure_topics
from engine.testing import TopicReader
from tests.integration.worker_process import WORKER_TOPICS, WorkerProcess, cart_abandoned, send, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = "rules:\n" + cart_abandoned(unless=False)
LEADS = [f"shopper-{n}" for n in range(12)]


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    processes = [
        WorkerProcess(with_rules(settings, tmp_path, RULES, state_dir=tmp_path / f"state{n}"), tmp_path / f"w{n}.log")
        for n in range(2)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


async def test_two_workers_split_partitions_and_fire_each_deadline_once(
    settings: Settings, workers: list[WorkerProcess]
) -> None:
    await ensure_topics(settings, WORKER_TOPICS)
    for worker in workers:
        worker.start()
    for worker in workers:  # started together, they join the group in one generation
        await worker.wait_ready()
    async with TopicReader.from_settings(settings, "actions") as reader:
        now = int(time.time() * 1000)
        await send(settings, [(lead.encode(), track(lead, "Product Added", now, f"m-{lead}")) for lead in LEADS])
        await reader.wait_for(lambda: len(reader.of("actions")) >= len(LEADS), timeout_s=40, what="all actions")
        done = time.time()
        await reader.wait_for(lambda: time.time() - done > 1.5, timeout_s=5, what="drain")
    fired = Counter(r.json()["lead_id"] for r in reader.of("actions"))
    assert fired == Counter(LEADS), fired
    assert all(w.alive() for w in workers)
    shares = [_fires(w.settings.web_port) for w in workers]
    assert sum(shares) == len(LEADS) and all(shares), f"each worker fires for its own partitions: {shares}"


def _fires(port: int) -> int:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(r'^nudge_rule_fires_total\{kind="absence",rule="cart_abandoned"\} ([0-9.]+)$', body, re.M)
    return int(float(found.group(1))) if found else 0
