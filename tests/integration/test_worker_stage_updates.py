"""A real `nudge worker` publishes the core's stage changes to `lead-updates` next to the actions they cause."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Settings
from engine.devstack import free_port
from tests.integration.worker_process import TopicReader, WorkerProcess, create_topics, send, track

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
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "lifecycle.yaml").write_text(RULES)
    process = WorkerProcess(
        settings.with_(rules_path=rules, allowed_lateness_s=0.5, web_port=free_port()), tmp_path / "worker.log"
    )
    try:
        yield process
    finally:
        process.stop()


async def test_stage_changes_reach_lead_updates_and_the_stage_action_reaches_actions(
    worker: WorkerProcess,
) -> None:
    settings = worker.settings
    await create_topics(settings, ["clickstream", "actions", "dead-letters", "lead-updates"])
    worker.start()
    await worker.wait_ready()
    now = int(time.time() * 1000)
    async with TopicReader(settings, "actions", "lead-updates") as reader:
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
