"""A real `nudge worker` publishes the core's stage changes to `lead-updates` next to the actions they cause."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Settings
from engine.testing import TopicReader
from tests.integration.worker_process import WORKER_TOPICS, WorkerProcess, send, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

RULES = """
rules:
  - id: lifecycle
    kind: score
    points: [{match: {event: Email Opened}, points: 10}]
    stages: {lead: 10, sql: 80, customer: null}
    stage_on: [{match: {event: Demo Requested}, stage: sql}]
    on_stage: {sql: {connector: slack, template: hot_lead, payload: {assign: true}}}
    action: {connector: log}
"""


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(with_rules(settings, tmp_path, RULES), tmp_path / "worker.log") as process:
        yield process


async def test_stage_changes_reach_lead_updates_and_the_stage_action_reaches_actions(
    worker: WorkerProcess,
) -> None:
    settings = worker.settings
    await worker.start_ready((*WORKER_TOPICS, "lead-updates"))
    now = int(time.time() * 1000)
    async with TopicReader.from_settings(settings, "actions", "lead-updates") as reader:
        await send(
            settings,
            [
                (b"ada", track("ada", "Email Opened", now, "m1")),
                (b"ada", track("ada", "Demo Requested", now + 100, "m2")),
            ],
        )
        await reader.wait_for(lambda: len(reader.of("lead-updates")) >= 2, timeout_s=20, what="two stage changes")
        await reader.wait_for(lambda: reader.of("actions"), timeout_s=10, what="the hot-lead action")

    updates = [r.json() for r in reader.of("lead-updates")]
    assert [(u["from"], u["to"]) for u in updates] == [(None, "lead"), ("lead", "sql")]
    assert all(u["kind"] == "stage_changed" and u["lead_id"] == "ada" for u in updates)
    assert updates[1]["at_ms"] == now + 100 and updates[1]["trigger"] == "m2"
    assert {r.key for r in reader.of("lead-updates")} == {b"ada"}
    [hot] = [r.json() for r in reader.of("actions")]
    assert hot["template"] == "hot_lead" and hot["payload"] == {"assign": True} and hot["context"]["stage"] == "sql"
