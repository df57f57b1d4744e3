"""Issue 20 acceptance on the real stack: rule deploys reach a running worker without a restart.

Events stream to one `nudge worker` process while `nudge rules deploy` ships v2 (a changed threshold and a new
rule): the worker switches within 5 s at a batch boundary; every action equals what the core computes with v1 up to
the switch and v2 from it on (split at the first offset per partition the worker's status record names), with the
matching `rules_version`, each once (no event lost or evaluated twice). A broken rule set is refused with
`file:line:col` and exit 2 and changes nothing; a rollback restores v1's behaviour; the history lists all three;
`nudge worker --watch` deploys an edit of its files; a restarted worker starts on the latest deploy.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from engine.cli import main
from engine.config import Settings
from engine.core import LeadState, RuleSet, evaluate
from engine.events import parse_event
from engine.kafka.admin import ensure_topics
from engine.language import load_rules
from engine.testing import TopicReader
from engine.worker.rule_versions import WorkerStatus, read_log
from tests.integration.worker_process import WORKER_TOPICS, WorkerProcess, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

V1 = """rules:
  - {id: pricing_interest, kind: threshold, match: {event: Pricing Viewed}, count: 3, within: 10m,
     action: {connector: webhook}}
  - {id: signed_up, kind: threshold, match: {event: Signed Up}, count: 1, within: 1m, action: {connector: webhook}}
"""
V2 = V1.replace("count: 3", "count: 2") + (
    "  - {id: demo_interest, kind: threshold, match: {event: Demo Viewed}, count: 1, within: 1m,\n"
    "     action: {connector: webhook}}\n"
)
BROKEN = V1.replace("within: 10m", "within: soon")
EVENTS = ("Pricing Viewed", "Pricing Viewed", "Demo Viewed", "Signed Up")
LEADS = [f"lead-{n}" for n in range(24)]


class Stream:
    """Sends events for a few leads until stopped, keeping (partition, offset, value) of each."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent: list[tuple[int, int, bytes]] = []
        self.stop = asyncio.Event()
        self._ids = itertools.count()
        self._random = random.Random(20)

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers)
        await producer.start()
        try:
            while not self.stop.is_set():
                lead = self._random.choice(LEADS)
                n = next(self._ids)
                value = track(lead, self._random.choice(EVENTS), int(time.time() * 1000), f"m-{n}")
                meta = await producer.send_and_wait(self.settings.topic("clickstream"), value, key=lead.encode())
                self.sent.append((meta.partition, meta.offset, value))
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()


async def nudge(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> int:
    for name, value in settings.env().items():
        monkeypatch.setenv(name, value)
    return await asyncio.to_thread(main, list(args))


async def status_of(settings: Settings, version: str, timeout_s: float = 10.0, workers: int = 1) -> WorkerStatus:
    """The status record of the one worker (`workers` > 1: of the first) once all report `version`."""
    return (await statuses_of(settings, version, timeout_s, workers))[0]


async def statuses_of(settings: Settings, version: str, timeout_s: float, workers: int) -> list[WorkerStatus]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = sorted((await read_log(settings)).statuses.values(), key=lambda s: s.worker)
        if len(statuses) == workers and all(s.version == version for s in statuses):
            return statuses
        await asyncio.sleep(0.2)
    raise AssertionError(f"the workers did not report version {version} within {timeout_s} s: {statuses}")


def expected_actions(sent: list[tuple[int, int, bytes]], phases: list[tuple[RuleSet, dict[int, int]]]) -> set:
    """What the core fires over `sent` in offset order per lead, each input with the version active at its offset:
    phases[i] = (rules, first offset per partition evaluated with them)."""
    states: dict[str, LeadState | None] = {}
    found = set()
    for partition, offset, value in sorted(sent):
        rules = phases[0][0]
        for candidate, first in phases[1:]:
            if offset >= first.get(partition, 0):
                rules = candidate
        event = parse_event(value)
        result = evaluate(rules, states.get(event.lead_id), event)
        states[event.lead_id] = result.state
        found |= {(a.action_id, a.rule, rules.version) for a in result.actions}
    return found


async def test_deploy_switches_a_running_worker_rollback_restores_and_broken_sets_are_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    worker_settings = with_rules(settings, tmp_path, V1)
    v2_dir, broken_dir = tmp_path / "v2", tmp_path / "broken"
    v2_dir.mkdir()
    broken_dir.mkdir()
    (v2_dir / "test.yaml").write_text(V2)
    (broken_dir / "test.yaml").write_text(BROKEN)
    v1, v2 = load_rules([worker_settings.rules_path]), load_rules([v2_dir])
    stream = Stream(worker_settings)
    with WorkerProcess(worker_settings, tmp_path / "worker.log") as worker:
        worker.argv.append("--watch")  # at the end: an edit of its files is deployed like `nudge rules deploy`
        await worker.start_ready()
        first = await status_of(worker_settings, v1.version)
        assert first.source == "files"
        assert await nudge(monkeypatch, worker_settings, "rules", "deploy", str(worker_settings.rules_path),
                           "--author", "ann", "-m", "the files, as deployed") == 0
        async with TopicReader.from_settings(worker_settings, "actions") as reader:
            streaming = asyncio.ensure_future(stream.run())
            await asyncio.sleep(2.0)
            deployed_at = time.time() * 1000
            assert await nudge(monkeypatch, worker_settings, "rules", "deploy", str(v2_dir), "--author", "bob") == 0
            switched = await status_of(worker_settings, v2.version)
            assert switched.previous == v1.version and switched.since_ms - deployed_at < 5000
            assert switched.switch, "the first offsets evaluated with v2"
            await asyncio.sleep(1.5)

            capsys.readouterr()
            assert await nudge(monkeypatch, worker_settings, "rules", "deploy", str(broken_dir)) == 2
            assert f"{broken_dir / 'test.yaml'}:2:" in capsys.readouterr().out  # file:line:col
            await asyncio.sleep(1.0)
            assert (await status_of(worker_settings, v2.version)).since_ms == switched.since_ms

            assert await nudge(monkeypatch, worker_settings, "rules", "rollback", v1.version[:8]) == 0
            rolled_back = await status_of(worker_settings, v1.version)
            assert rolled_back.previous == v2.version
            await asyncio.sleep(1.5)
            stream.stop.set()
            await streaming

            expected = expected_actions(
                stream.sent, [(v1, {}), (v2, switched.switch), (v1, rolled_back.switch)]
            )
            versions = {v1.version, v2.version}
            assert {rule for _, rule, version in expected if version == v2.version} >= {"demo_interest"}

            def arrived() -> set:
                return {(a["action_id"], a["rule"], a.get("rules_version")) for a in reader.docs()}

            await reader.wait_for(lambda: arrived() >= expected, timeout_s=15, what="every expected action")
            await asyncio.sleep(1.0)  # anything extra would land now
        docs = reader.docs()
        assert arrived() == expected
        assert len(docs) == len({d["action_id"] for d in docs}), "each action once"
        assert {d["rules_version"] for d in docs} == versions
        (worker_settings.rules_path / "test.yaml").write_text(V2)
        assert (await status_of(worker_settings, v2.version)).previous == v1.version
        assert worker.alive() and "Traceback" not in worker.log_text()
        # A worker that starts later starts on the latest deploy, not on its files (v1 again here).
        worker.stop()
        worker.argv.remove("--watch")
        (worker_settings.rules_path / "test.yaml").write_text(V1)
        restarted_ms = time.time() * 1000
        await worker.start_ready()
        again = await status_of(worker_settings, v2.version)
        assert again.source == "deploy" and again.since_ms > restarted_ms

    capsys.readouterr()
    assert await nudge(monkeypatch, worker_settings, "rules", "history", "--json") == 0
    history = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    deploys = [orjson.loads(h) for h in history]
    assert [d["version"] for d in deploys] == [v1.version, v2.version, v1.version, v2.version]
    assert [d["author"] for d in deploys][:2] == ["ann", "bob"] and deploys[3]["author"].endswith("(watch)")
    assert await nudge(monkeypatch, worker_settings, "rules", "status") == 0
    assert f"deployed: {v2.version}" in capsys.readouterr().out


async def test_two_workers_switch_together_each_on_its_own_partitions(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2_dir = tmp_path / "v2"
    v2_dir.mkdir()
    (v2_dir / "test.yaml").write_text(V2)
    workers = [
        WorkerProcess(with_rules(settings, tmp_path, V1, state_dir=tmp_path / f"state{n}"), tmp_path / f"w{n}.log")
        for n in range(2)
    ]
    v1, v2 = load_rules([workers[0].settings.rules_path]), load_rules([v2_dir])
    stream = Stream(settings)
    try:
        await ensure_topics(settings, WORKER_TOPICS)
        for worker in workers:
            worker.start()
        for worker in workers:  # started together, they join the group in one generation
            await worker.wait_ready()
        await statuses_of(settings, v1.version, 10, workers=2)
        async with TopicReader.from_settings(settings, "actions") as reader:
            streaming = asyncio.ensure_future(stream.run())
            await asyncio.sleep(2.0)
            deployed_at = time.time() * 1000
            assert await nudge(monkeypatch, settings, "rules", "deploy", str(v2_dir)) == 0
            switched = await statuses_of(settings, v2.version, 10, workers=2)
            assert all(s.since_ms - deployed_at < 5000 for s in switched)
            first = {**switched[0].switch, **switched[1].switch}
            assert not switched[0].switch.keys() & switched[1].switch.keys(), "each partition has one owner"
            assert sorted(first) == list(range(settings.partitions))
            await asyncio.sleep(1.5)
            stream.stop.set()
            await streaming
            expected = expected_actions(stream.sent, [(v1, {}), (v2, first)])

            def arrived() -> set:
                return {(a["action_id"], a["rule"], a.get("rules_version")) for a in reader.docs()}

            await reader.wait_for(lambda: arrived() >= expected, timeout_s=15, what="every expected action")
            await asyncio.sleep(1.0)
        docs = reader.docs()
        assert arrived() == expected
        assert len(docs) == len({d["action_id"] for d in docs}), "each action once"
        assert all(w.alive() for w in workers)
    finally:
        for worker in workers:
            worker.stop()
