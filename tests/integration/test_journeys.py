"""Issue 18's acceptance on the real stack: a journey run by a `nudge worker` and delivered by a `nudge dispatch`
(subprocesses, the dev stack's Tansu broker and Redis, a webhook peer on loopback), then stored by the ClickHouse
sink (in this process, chDB).

The journey (seconds for days): wait 2 s → send s1 → wait_for Project Created within 2 s (else → send s2) → end;
exit on Subscription Started.
- `quiet` enters and sends nothing more: s1 and, when the wait_for times out, s2, each within 1 s of its due time
  (entry + 2 s, entry + 4 s), with no further traffic of its own;
- `leaver` gets s1, then exits on Subscription Started while waiting: nothing more;
- `crash` enters later; once its s1 is delivered the worker is SIGKILLed (mid-journey: waiting at the wait_for)
  and restarted: its s2 still goes out, and nothing is delivered twice.
Expected = `simulate` over the clickstream read back: every expected send delivered exactly once, nothing else.
Then the same run in ClickHouse: the journey KPIs and `nudge leads show`'s journey status.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from engine.config import Settings
from engine.core.simulate import simulate
from engine.events import parse_event
from engine.language import load_rules
from engine.testing import RecordingPeer, TopicReader, wait_until
from tests.integration.rig import WorkerAndDispatcher
from tests.integration.worker_process import send, track, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = """
rules:
  - id: flow
    kind: journey
    entry: {event: "Signed Up"}
    exit_on: {event: "Subscription Started"}
    steps:
      - {id: w1, wait: 2s}
      - {id: s1, send: {connector: webhook}}
      - {id: wf, wait_for: {event: "Project Created", within: 2s}, then: done, else: s2}
      - {id: s2, send: {connector: webhook}}
      - {id: done, end: true}
"""
CONNECTORS = """
connectors:
  webhook:
    type: webhook
    url: {url}
dispatcher: {{schedule_poll_s: 0.05, commit_interval_s: 0.2, session_timeout_ms: 6000}}
"""
TOPICS = ("clickstream", "identity-handovers", "actions", "deliveries", "dead-letters", "lead-updates")


def _metric(port: int, journey: str, event: str, reason: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    wanted = f'nudge_journey_events_total{{event="{event}",journey="{journey}",reason="{reason}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


async def test_journey_waits_sends_exits_and_survives_a_worker_kill(settings: Settings, tmp_path: Path) -> None:
    began = time.monotonic()
    # Deadlines fire 0.1-0.15 s after they fall due (allowed lateness 0.1 s, timer every 0.05 s).
    settings = with_rules(settings, tmp_path, RULES, allowed_lateness_s=0.1, timer_interval_s=0.05)
    suffix = f"{time.time_ns() % 10**9}"
    quiet, leaver, crash = (f"{name}-{suffix}" for name in ("quiet", "leaver", "crash"))
    async with (
        RecordingPeer() as peer,
        WorkerAndDispatcher(settings, tmp_path, CONNECTORS.format(url=peer.url), TOPICS) as run,
    ):
        out, worker = run.out, run.worker

        def delivered(lead: str) -> list[tuple[str, float]]:
            """(step, arrival wall ms) of the sends the peer received for `lead`."""
            actions = {a["action_id"]: a for a in (r.json() for r in out.of("actions"))}
            return [
                (actions[r.headers["X-Nudge-Action-Id"]]["step"], r.at * 1000)
                for r in peer.requests
                if r.headers.get("X-Nudge-Action-Id") in actions
                and actions[r.headers["X-Nudge-Action-Id"]]["lead_id"] == lead
            ]

        t0 = int(time.time() * 1000)
        entries = [(lead.encode(), track(lead, "Signed Up", t0, f"su-{lead}")) for lead in (quiet, leaver)]
        await send(settings, entries)
        await wait_until(lambda: delivered(leaver), 6, "the leaver's first send")
        left_ms = int(time.time() * 1000)  # waiting at wf (until t0 + 4 s)
        await send(settings, [(leaver.encode(), track(leaver, "Subscription Started", left_ms, f"ss-{leaver}"))])
        t1 = int(time.time() * 1000)
        await send(settings, [(crash.encode(), track(crash, "Signed Up", t1, f"su-{crash}"))])
        await wait_until(lambda: len(delivered(quiet)) == 2, 8, "the quiet lead's two sends")
        # each send within 1 s of its due time, with no traffic from the lead after its entry
        (s1, at1), (s2, at2) = delivered(quiet)
        late = (at1 - (t0 + 2000), at2 - (t0 + 4000))
        print(f"quiet lead: sends delivered {late[0]:.0f} ms and {late[1]:.0f} ms after they fell due")
        assert (s1, s2) == ("s1", "s2") and all(0 <= d < 1000 for d in late), late
        port = settings.web_port
        await wait_until(
            lambda: (_metric(port, "flow", "entered"), _metric(port, "flow", "exited", "exit_on")) == (3, 1),
            5, "the worker's journey counters", off_loop=True,
        )  # fmt: skip

        # the crash lead: SIGKILL once its s1 is delivered (it waits at wf until t1 + 4 s), restart at once
        await wait_until(lambda: delivered(crash), 6, "the crash lead's first send")
        worker.signal(signal.SIGKILL)
        worker.wait(10)
        worker.start()
        await worker.wait_ready()
        await wait_until(lambda: len(delivered(crash)) >= 2, 15, "the crash lead's second send after the restart")

        # expected: the core's own run over what the clickstream holds
        async with TopicReader.from_settings(settings, "clickstream") as events_reader:
            await wait_until(lambda: len(events_reader.records) == 4, 10, "the clickstream read back")
            events = [parse_event(r.value) for r in events_reader.records]
        expected = {a.action_id for a in simulate(load_rules([settings.rules_path]), events)}
        await asyncio.sleep(2.0)  # anything extra or doubled would arrive meanwhile
        sent = Counter(r.headers.get("X-Nudge-Action-Id") for r in peer.requests)
        assert set(sent) == expected and len(expected) == 5, (sent, expected)
        assert max(sent.values()) == 1, sent  # nothing delivered twice across the kill
        assert [step for step, _ in delivered(leaver)] == ["s1"]  # nothing after the exit
        assert [step for step, _ in delivered(crash)] == ["s1", "s2"]
        records = [d for d in (r.json() for r in out.of("lead-updates")) if d.get("kind") == "journey"]
        assert {(d["lead_id"], d["event"], d["reason"]) for d in records if d["event"] == "exited"} == {
            (leaver, "exited", "exit_on")
        }
        assert run.dispatcher.stop() == 0, run.dispatcher.log_tail()
    await _in_clickhouse(settings, quiet, leaver, crash)
    print(f"wall: {time.monotonic() - began:.1f} s")


async def _in_clickhouse(settings: Settings, quiet: str, leaver: str, crash: str) -> None:
    """The same run stored by the sink: KPIs per journey and step, and each lead's journey status."""
    from engine.clickhouse.client import connect
    from engine.clickhouse.journeys import journey_kpis, lead_journeys
    from engine.clickhouse.migrations import migrate
    from engine.clickhouse.sink import Sink

    sink = Sink(settings, max_rows=500, max_wait_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    client = connect(settings.clickhouse_dsn)  # same path, same process: shares the sink's engine
    try:
        migrate(client)

        def stored() -> bool:
            sql = "SELECT count() FROM actions FINAL WHERE step = 'sent'"
            completed = "SELECT count() FROM lead_updates FINAL WHERE kind = 'journey' AND payload LIKE '%completed%'"
            return bool(client.query(sql).result_rows[0][0] >= 5 and client.query(completed).result_rows[0][0] >= 2)

        await wait_until(stored, 60, "the run in ClickHouse", off_loop=True)
        now_ms = int(time.time() * 1000)
        delay = client.query(
            "SELECT max(toUnixTimestamp64Milli(emitted_at) - toUnixTimestamp64Milli(fired_at)) FROM actions FINAL "
            "WHERE step = 'fired' AND lead_id = {lead:String}",
            parameters={"lead": quiet},
        ).result_rows[0][0]
        print(f"quiet lead: the worker emitted its sends at most {delay} ms after they fell due")
        (kpis,) = journey_kpis(client, now_ms - 600_000, now_ms + 60_000)
        assert (kpis["journey"], kpis["entered"], kpis["exited"], kpis["completed"]) == ("flow", 3, {"exit_on": 1}, 2)
        steps = {s["step"]: s for s in kpis["steps"]}
        assert [s["step"] for s in kpis["steps"]] == ["w1", "s1", "wf", "s2", "done"]
        assert (steps["s1"]["sent"], steps["s2"]["sent"], steps["wf"]["exited"]) == (3, 2, {"exit_on": 1})
        assert steps["w1"]["reached"] == 3 and steps["done"]["completed"] == 2
        status = {lead: lead_journeys(client, [lead]) for lead in (quiet, leaver, crash)}
        assert [(s.status, s.step) for s in status[quiet]] == [("completed", "done")]
        assert [(s.status, s.step, s.reason) for s in status[leaver]] == [("exited", "wf", "exit_on")]
        assert [(s.status, s.step) for s in status[crash]] == [("completed", "done")]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        client.close()
    # `nudge leads show` (its gather, with the sink stopped: chDB allows one process per store)
    from engine.commands.leads import gather, render

    shown = await asyncio.to_thread(gather, settings, leaver)
    assert [(j["journey"], j["status"], j["step"], j["reason"]) for j in shown.journeys] == [
        ("flow", "exited", "wf", "exit_on")
    ]
    assert not [u for u in shown.updates if u["kind"] == "journey"]  # in their own section, not the updates'
    text = render(shown)
    assert "flow                     exited at wf" in text and "flow/s1" in text, text
