"""The demo's orchestration: dev stack → receivers → worker, dispatcher, sink → replay → summary → clean up.

Contract of `run_demo(options)`:
- Starts the dev stack under `options.root` unless it is already running (then it is reused and left running),
  loopback receivers for the connectors, and `nudge worker`, `nudge dispatch`, `nudge sink` as child processes
  (logs in `<root>/demo/`). Each run uses fresh topics (a per-run prefix and app id) and a fresh embedded
  ClickHouse store, so the summary covers this run only.
- Replays the sample clickstream rebased to now, printing fired actions live and a progress line every few
  seconds; waits until the last deadline of the replayed events has passed and outputs went quiet, then until
  the sink has committed everything that was produced; stops the children; reads the summary back from
  ClickHouse and prints it.
- Whatever happens (failure, Ctrl-C, SIGTERM) it stops every process it started, in order, before returning.
  Returns 0 on success, 1 when a part failed (the message names the part and its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from engine.config import Settings
from engine.demo.options import DemoOptions
from engine.demo.receivers import Receivers
from engine.demo.replay import Replayer, load_sample
from engine.demo.watch import Watcher
from engine.devstack import DevStack, DevStackError, free_port
from engine.kafka import topics
from engine.kafka.admin import bootstrap_servers as bootstrap
from engine.kafka.admin import ensure_topics
from engine.testing import ChildFailed, ChildProcess, CommittedOffsets

WORKER_READY = "deadline index rebuilt"  # logged by engine.worker.lead_worker once its partitions are recovered
PROGRESS_EVERY_S = 5.0
QUIET_FOR_S = 2.0


def say(text: str) -> None:
    print(text, flush=True)


def demo_settings(options: DemoOptions, stack_env: dict[str, str], run_dir: Path) -> Settings:
    run_id = time.strftime("%H%M%S")
    base = Settings.from_env({**stack_env})
    return base.with_(
        app_id=f"nudge-demo-{run_id}",
        topic_prefix=f"demo-{run_id}-",
        partitions=options.partitions,
        rules_path=options.rules.resolve(),
        connectors_path=options.connectors.resolve(),
        clickhouse_dsn=f"chdb://{(run_dir / 'clickhouse').resolve()}",
        state_dir=(run_dir / "state").resolve(),
        web_port=free_port(),
        allowed_lateness_s=options.allowed_lateness_s,
        log_level="info",
    )


async def create_topics(settings: Settings) -> None:
    await ensure_topics(settings, (*topics.ALL_TOPICS, topics.IDENTITY_HANDOVERS))


async def wait_for_sink(
    settings: Settings, ends: dict[tuple[str, int], int], children: list[ChildProcess], timeout_s: float = 90
) -> None:
    """Until the sink's consumer group has committed every offset in `ends` (what was produced and seen).

    Reads the group's offsets with a consumer that never joins the group (Tansu closes the connection on the
    admin client's OffsetFetch, but answers the consumer's)."""
    async with CommittedOffsets(bootstrap(settings), f"{settings.app_id}-sink") as offsets:
        deadline = time.monotonic() + timeout_s
        waiting = dict(ends)
        while time.monotonic() < deadline:
            committed = await offsets.of(waiting)
            waiting = {tp: end for tp, end in waiting.items() if committed[tp] < end}
            if not waiting:
                return
            for child in children:
                child.check_alive()
            await asyncio.sleep(0.5)
        raise ChildFailed(f"the sink did not catch up within {timeout_s:.0f} s (see its log)")


def longest_deadline_ms(rules_path: Path) -> int:
    from engine.language import load_rules

    rules = load_rules([rules_path])
    windows = [getattr(rule.logic, "within_ms", 0) for rule in rules.active if rule.kind == "absence"]
    return max(windows, default=0)


def journey_lines(journeys: list[dict]) -> list[str]:
    """Per journey that leads entered (`engine.clickhouse.journeys.journey_kpis`): entered, sends fired and sent
    by step, completed, exited, goal; `nudge report --journeys` has every step."""
    lines = []
    for j in journeys:
        if not j["entered"]:
            continue
        exited = sum(j["exited"].values())
        lines.append(
            f"  journey {j['journey']:<17} entered {j['entered']:,} · sent {j['sent']:,} of {j['fired']:,} fired · "
            f"completed {j['completed']:,} · exited {exited:,} · goal {j['goal']:,}"
        )
        sends = [f"{s['step']} {s['sent']:,}/{s['fired']:,}" for s in j["steps"] if s["fired"]]
        waiting = [f"{s['step']} {s['reached']:,}" for s in j["steps"] if s["reached"] and not s["fired"]]
        if sends:
            lines.append(f"    sends by step (sent/fired): {', '.join(sends)}")
        if waiting:
            lines.append(f"    other steps reached: {', '.join(waiting)}")
    return lines


def print_summary(settings: Settings) -> None:
    from engine.clickhouse.client import connect
    from engine.clickhouse.experiments import configs as experiment_configs
    from engine.clickhouse.experiments import report as experiments_report
    from engine.clickhouse.journeys import journey_kpis
    from engine.clickhouse.kpis import summary
    from engine.language import load_rules

    configs = experiment_configs(load_rules([settings.rules_path]))  # for the sample-ratio check
    client = connect(settings.clickhouse_dsn)
    try:
        s = summary(client)
        journeys = journey_kpis(client, 0, 2**62)
        measured = experiments_report(client, 0, 2**62, configs)
    finally:
        client.close()
    say("")
    say(f"Summary, read back from ClickHouse ({settings.clickhouse_dsn}):")
    say(f"  events stored          {s['events']:>8,}   from {s['leads']:,} leads")
    say(f"  actions fired          {s['actions_fired']:>8,}")
    for rule, n in s["actions_by_rule"].items():
        say(f"    {rule:<26} {n:>6,}")
    outcomes = " · ".join(f"{step} {n:,}" for step, n in s["outcomes"].items()) or "none"
    say(f"  delivery outcomes      {outcomes}")
    say(f"  dead letters           {s['dead_letters']:>8,}")
    delay = s["detection_delay_p50_ms"]
    shown = "-" if delay is None else f"{delay / 1000:.2f} s"
    say(f"  median detection delay {shown:>8}   (event or deadline → action emitted by the worker)")
    for line in journey_lines(journeys):
        say(line)
    for line in experiment_lines(measured):
        say(line)


def experiment_lines(measured: dict) -> list[str]:
    """The demo's last word: each experiment's arms and its measured uplift against the holdout (the report of
    `nudge report experiments`)."""
    lines = []
    for e in measured["experiments"]:
        arms = " · ".join(
            f"{a['arm']} {a['conversions']:,}/{a['leads']:,} converted ({(a['conversion_rate'] or 0) * 100:.1f}%)"
            for a in e["arms"]
        )
        lines.append(f"  experiment {e['experiment']:<15} {arms}")
        balance = e.get("balance")
        if balance and balance.get("p_value") is not None:
            state = "MISMATCH" if balance["mismatch"] else "as configured"
            lines.append(f"    arms split {state} (chi-square p {balance['p_value']:.2f})")
        o = e["overall"]
        if o is None:
            continue
        if o["absolute_uplift"] is None:
            lines.append(f"    measured uplift: {o['verdict']}")
            continue
        low, high = o["absolute_uplift_ci95"]
        lines.append(
            f"    measured uplift {o['absolute_uplift'] * 100:+.1f} pp (95 % interval {low * 100:+.1f} .. "
            f"{high * 100:+.1f} pp); verdict: {o['verdict']} (always-valid p {o['sequential']['p_value']:.3f})"
        )
        low, high = o["incremental_revenue_ci95"]
        lines.append(
            f"    incremental revenue {o['incremental_revenue']:+,.2f} (95 % interval {low:+,.2f} .. {high:+,.2f}); "
            "`nudge report experiments` has the details"
        )
    return lines


async def _replay_and_watch(settings: Settings, options: DemoOptions, children: list[ChildProcess]) -> None:
    records = load_sample(options.sample)
    names = {role: settings.topic(role) for role in (topics.ACTIONS, topics.DELIVERIES, topics.DEAD_LETTERS)}
    watcher = Watcher(bootstrap(settings), names, out=say)
    replayer = Replayer(bootstrap(settings), settings.topic(topics.CLICKSTREAM), records)
    failures: list[ChildFailed] = []
    main = asyncio.current_task()

    async def progress() -> None:
        """Progress line every few seconds; a child that died aborts the run (cancels the main task)."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            try:
                for child in children:
                    child.check_alive()
            except ChildFailed as exc:
                failures.append(exc)
                if main is not None:
                    main.cancel()
                return
            say(watcher.progress(replayer.sent, len(records)))

    await watcher.start()
    ticker = asyncio.create_task(progress())
    try:
        say(f"Replaying {len(records):,} events of {options.sample.name} over {replayer.span_ms / 1000:.0f} s "
            f"(rules: {options.rules}); fired actions:")
        clickstream_ends = await replayer.run()
        last_due_ms = (
            replayer.first_ms + replayer.shift_ms + replayer.span_ms
            + longest_deadline_ms(options.rules) + int(options.allowed_lateness_s * 1000)
        )
        until = time.strftime("%H:%M:%S", time.localtime(last_due_ms / 1000))
        say(f"All events sent; waiting for the last deadlines (until {until})...")
        limit = time.monotonic() + 120
        while time.monotonic() < limit:
            quiet = time.monotonic() - watcher.last_action_at >= QUIET_FOR_S
            if time.time() * 1000 >= last_due_ms + 1000 and quiet:
                break
            await asyncio.sleep(0.2)
        # Let the dispatcher finish the last deliveries: every action has an outcome and none came lately.
        deadline, seen = time.monotonic() + 30, -1
        while time.monotonic() < deadline:
            total = sum(watcher.outcomes.values())
            if total == seen and total >= sum(watcher.actions.values()):
                break
            seen = total
            await asyncio.sleep(1.0)
        say(watcher.progress(replayer.sent, len(records)))
    except asyncio.CancelledError:
        if failures:
            raise failures[0] from None
        raise
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await watcher.stop()
    ends = {(settings.topic(topics.CLICKSTREAM), p): end for p, end in clickstream_ends.items()}
    ends.update(watcher.ends)
    say("Waiting for the sink to write everything to ClickHouse...")
    await wait_for_sink(settings, ends, children)


async def run_demo(options: DemoOptions) -> int:
    started = time.monotonic()
    stack = DevStack(options.root)
    reuse = stack.info() is not None
    try:
        info = stack.up()
    except DevStackError as exc:
        say(f"nudge demo: {exc}")
        return 1
    say(f"Dev stack {'reused' if reuse else 'started'}: broker {info.bootstrap}, redis {info.redis_url}")
    run_dir = options.root.resolve() / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    settings = demo_settings(options, info.env(), run_dir)
    receivers = Receivers()
    children: list[ChildProcess] = []
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        env = {**os.environ, **settings.env(), **(await receivers.start())}
        await create_topics(settings)
        children = [
            ChildProcess.nudge("sink", ["sink"], env, run_dir / "sink.log"),
            ChildProcess.nudge(
                "dispatcher",
                ["dispatch", "--connectors", str(settings.connectors_path), "--metrics-port", "0"],
                env,
                run_dir / "dispatcher.log",
            ),
            # The worker never restarts during the demo, so it can skip the one-record-per-batch recovery
            # workaround (engine/worker/faust_ext/broker_profiles.py), which costs seconds of latency on a busy machine.
            ChildProcess.nudge(
                "worker", ["worker"], {**env, "NUDGE_BROKER_PROFILE": "dev-batched"}, run_dir / "worker.log"
            ),
        ]
        for child in children:
            child.start()
        say(f"Started worker, dispatcher and sink (logs in {run_dir}); waiting for the worker to join...")
        await children[-1].wait_for_log(WORKER_READY, timeout_s=90)
        say(f"Worker ready after {time.monotonic() - started:.0f} s; metrics on "
            f"http://127.0.0.1:{settings.web_port}/metrics")
        await _replay_and_watch(settings, options, children)
        for child in reversed(children):  # worker, dispatcher, then the sink (flushes on SIGTERM)
            child.stop()
        print_summary(settings)
        say(f"\nDemo finished in {time.monotonic() - started:.0f} s.")
        return 0
    except ChildFailed as exc:
        say(f"nudge demo: {exc}")
        return 1
    except asyncio.CancelledError:
        say("\nInterrupted: stopping everything the demo started...")
        raise
    except Exception as exc:  # the user gets the cause and where the details are, not a bare traceback
        (run_dir / "error.log").write_text(traceback.format_exc())
        say(f"nudge demo failed: {type(exc).__name__}: {exc}; details in {run_dir / 'error.log'}")
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        await receivers.stop()
        if not reuse:
            stack.down()
            say("Dev stack stopped.")
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGTERM)
        sys.stdout.flush()
