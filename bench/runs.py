"""The measurements of one benchmark run, each against the same broker and the same seeded workload.

Every measurement gets its own topic prefix and consumer group (`RunContext.settings`), so they never see each
other's outputs or offsets; the throughput steps all read one shared, pre-filled backlog (`Backlog`) from the
beginning. Throughput is measured in steady-state windows of fixed duration from the processes' own counters
sampled at the windows' edges (bench/steady.py), never from the first poll that saw progress.

- `measure_raw`     (1) plain aiokafka consume + orjson decode of the backlog (starting over when caught up).
- `measure_naive`   (2) the naive Faust agent (bench/naive_app.py) on the backlog.
- `measure_worker`  (3) `nudge worker` process(es) with the shipped rule pack (every file in rules/): events/s,
                    CPU per 1k events; (5) state per lead and RSS after the windows; (6) 2 and 4 workers sharing
                    the partitions; (7) the journey-heavy backlog.
- `measure_latency` (4) one worker under a paced offered load, events stamped with the wall clock as sent:
                    event -> action latency of the threshold rule (action arrival on `actions` minus the
                    triggering event's time) and deadline lag of abandonment rules (arrival minus the
                    deadline, for deadlines that fell due, lateness included, while the load was on;
                    time-compressed pack, see bench/rule_pack.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import kafka_io, steady
from bench.rule_pack import SHIPPED, compressed_pack
from bench.workload import Record, Workload, laps
from engine.config import Settings
from engine.devstack import StackInfo, free_port
from engine.testing import ChildFailed, ChildProcess, wait_until

READY_MARK = "deadline index rebuilt"  # logged by engine/worker/lead_worker.py once its partitions are recovered
POLL_S = 0.5  # scraping /metrics costs the worker CPU: every 0.2 s cost ~5% (py-spy)
STALL_S = 45.0  # no progress for this long: the measurement fails instead of waiting for its timeout


class BenchError(RuntimeError):
    """A benchmark step could not run; the message says which and where its log is."""


@dataclass
class RunContext:
    """Where a run's processes connect and log, and how they are configured."""

    stack: StackInfo
    workdir: Path
    broker_profile: str
    partitions: int
    worker_env: dict[str, str] = field(default_factory=dict)  # experiments: extra NUDGE_*/BENCH_* variables
    broker_pid: int | None = None  # for the broker's CPU beside the measured processes'
    run_id: str = field(default_factory=lambda: f"b{int(time.time())}")
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def settings(self, label: str, **changes: Any) -> Settings:
        n = next(self._counter)
        prefix = f"{self.run_id}-{n}-{label}-"
        base = Settings(
            broker_url=self.stack.broker_url,
            broker_profile="dev",  # Tansu; `broker_profile` of the context picks dev or batched on top
            redis_url=self.stack.redis_url,
            clickhouse_dsn=self.stack.clickhouse_dsn,
            rules_path=SHIPPED,
            state_dir=self.workdir / "state" / prefix,
            app_id=f"nudge-{prefix}",
            topic_prefix=prefix,
            partitions=self.partitions,
            log_level="info",
        )
        return base.with_(**changes)

    def env(self, settings: Settings, **extra: str) -> dict[str, str]:
        return {**os.environ, **settings.env(), "BENCH_BROKER_PROFILE": self.broker_profile, **extra}

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"count": len(ordered), "p50": round(rank(0.5), 3), "p99": round(rank(0.99), 3),
            "max": round(ordered[-1], 3)}


async def _wait_for_log(procs: Sequence[ChildProcess], mark: str, timeout_s: float) -> None:
    """Until every process logged `mark`; `ChildFailed` as soon as one of them exits."""
    pending = list(procs)

    def all_logged() -> bool:
        for proc in list(pending):
            proc.check_alive()
            if mark in proc.log_text():
                pending.remove(proc)
        return not pending

    try:
        await wait_until(all_logged, timeout_s, f"{mark!r}", poll_s=POLL_S)
    except TimeoutError:
        names = ", ".join(p.name for p in pending)
        raise BenchError(f"{names} not ready after {timeout_s} s (no {mark!r} in {pending[0].log_path})") from None


def scrape(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """Samples of a worker's /metrics, summed over labels ({} when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


async def _scrape_all(ports: Sequence[int]) -> list[dict[str, float]]:
    return await asyncio.gather(*(asyncio.to_thread(scrape, port) for port in ports))


async def create_inputs(ctx: RunContext, settings: Settings) -> str:
    """Create the worker's input topics with the run's partition count; returns the clickstream topic.

    `identity-handovers` is created here too: left to the worker, it can be auto-created by the broker with the broker's
    default partition count (Tansu: 4) before Faust declares it, and ticks for higher partitions then fail
    (see bench/FINDINGS.md).
    """
    for name in ("clickstream", "identity-handovers"):
        await kafka_io.create_topic(ctx.stack.bootstrap, settings.topic(name), ctx.partitions)
    return settings.topic("clickstream")


def _total(samples: Sequence[dict[str, float]], name: str) -> float:
    return sum(s.get(name, 0.0) for s in samples)


# --- the shared backlog ---------------------------------------------------------------------------------------
@dataclass
class Backlog:
    """A pre-filled clickstream topic every throughput step reads from the beginning with its own consumer group."""

    topic: str
    records: int = 0  # records produced (malformed ones included: the naive agent counts those)
    valid: int = 0  # events a worker counts as consumed
    produce_seconds: float = 0.0

    async def fill(self, ctx: RunContext, records: Iterable[Record]) -> dict[str, float]:
        """Append `records` (the topic is created with the run's partitions on first use)."""
        if not self.records:
            await kafka_io.create_topic(ctx.stack.bootstrap, self.topic, ctx.partitions)
        done = await kafka_io.produce_backlog(ctx.stack.bootstrap, self.topic, records, ctx.partitions)
        self.records += int(done["records"])
        self.valid += int(done["valid"])
        self.produce_seconds += done["seconds"]
        return done


def _context(ctx: RunContext) -> dict[str, float]:
    return steady.context_sample(ctx.broker_pid)


# --- (1) raw consume ------------------------------------------------------------
class _RawProbe:
    backlog = 10**12  # the reader starts over when it has caught up: it never runs out

    def __init__(self, ctx: RunContext, reader: kafka_io.RawReader) -> None:
        self.ctx, self.reader = ctx, reader

    def check_alive(self) -> None:
        self.reader.check_alive()

    async def sample(self) -> steady.Sample:
        context = {**_context(self.ctx), "harness_cpu_s": 0.0}  # the harness is what is measured here
        return steady.Sample(time.monotonic(), float(self.reader.seen), (time.process_time(),), 0, **context)


async def measure_raw(ctx: RunContext, backlog: Backlog, plan: steady.Plan) -> dict[str, Any]:
    """(1): a plain aiokafka consumer + orjson decode over the backlog, steady-state windows."""
    reader = kafka_io.RawReader(ctx.stack.bootstrap, backlog.topic)
    await reader.start()
    try:
        return await steady.measure_windows(_RawProbe(ctx, reader), plan)
    finally:
        await reader.stop()


# --- (2) naive Faust agent ------------------------------------------------------------
class _NaiveProbe:
    def __init__(self, ctx: RunContext, proc: ChildProcess, status: Path, backlog: int) -> None:
        self.ctx, self.proc, self.status, self.backlog = ctx, proc, status, backlog

    def check_alive(self) -> None:
        self.proc.check_alive()

    async def sample(self) -> steady.Sample:
        """The agent's own counters as it last wrote them (at most 0.2 s old, stamped with its own clock)."""
        joins = self.proc.log_text().count("Joined group")
        try:
            done = orjson.loads(self.status.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return steady.Sample(time.monotonic(), 0.0, (self.proc.cpu_s() or 0.0,), joins, **_context(self.ctx))
        return steady.Sample(done["t"], float(done["count"]), (done["cpu_s"],), joins, **_context(self.ctx))


async def measure_naive(
    ctx: RunContext, backlog: Backlog, plan: steady.Plan, tuned: bool = False, writes: int = 2
) -> dict[str, Any]:
    """(2) on the shared backlog; `tuned` runs it with the worker's Faust settings, `writes=1` with one table
    write per event instead of two."""
    label = ("naive-tuned" if tuned else "naive") + ("-1w" if writes == 1 else "")
    settings = ctx.settings(label)
    status = ctx.workdir / f"{settings.topic_prefix}{label}-status.json"
    env = ctx.env(
        settings.with_(web_port=free_port()),
        BENCH_APP_ID=f"{settings.app_id}{label}",
        BENCH_CLICKSTREAM_TOPIC=backlog.topic,
        BENCH_STATUS=str(status),
        BENCH_NAIVE_TUNED="1" if tuned else "0",
        BENCH_NAIVE_WRITES=str(writes),
    )
    proc = ChildProcess(label, [sys.executable, "-m", "bench.naive_app"], env, ctx.log(label)).start()
    try:
        result = await steady.measure_windows(_NaiveProbe(ctx, proc, status, backlog.records), plan)
        result["rss_bytes"] = proc.rss_bytes()
    finally:
        proc.stop()
    return result


# --- (3) (5) (6) the Nudge worker ------------------------------------------------------------
def _worker(
    ctx: RunContext, settings: Settings, name: str, wrap: Sequence[str] = (), extra_env: dict[str, str] | None = None
) -> ChildProcess:
    argv = [*wrap, sys.executable, "-m", "bench.run_worker"]
    return ChildProcess(name, argv, {**ctx.env(settings), **ctx.worker_env, **(extra_env or {})}, ctx.log(name))


@dataclass
class WorkerFleet:
    """Worker processes of one measurement, with their metrics ports."""

    procs: list[ChildProcess]
    ports: list[int]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


async def start_workers(
    ctx: RunContext,
    settings: Settings,
    count: int,
    label: str,
    wrap: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0,
) -> WorkerFleet:
    procs, ports = [], []
    for i in range(count):
        port = free_port()
        procs.append(_worker(ctx, settings.with_(web_port=port), f"{label}-worker{i + 1}", wrap, extra_env).start())
        ports.append(port)
    fleet = WorkerFleet(procs, ports)
    try:
        await _wait_for_log(procs, READY_MARK, timeout_s=ready_timeout_s)
        if count > 1:
            await asyncio.sleep(2.0)  # let a rebalance caused by the later joiner settle before loading
    except BaseException:
        fleet.stop()
        raise
    return fleet


async def _consume_all(
    fleet: WorkerFleet,
    expected: float,
    timeout_s: float,
    measure_cpu: bool = True,
) -> dict[str, Any]:
    """Poll the workers' metrics until they consumed `expected` events; rate and CPU from the first poll
    that saw progress to the last. A workload so small that it is consumed before a second poll is timed
    from `loaded_at` (when loading began) instead."""
    deadline = time.monotonic() + timeout_s
    start: tuple[float, float, list[float]] | None = None
    consumed = 0.0
    progress = (time.monotonic(), consumed)
    while time.monotonic() < deadline:
        if time.monotonic() - progress[0] > STALL_S:
            raise BenchError(
                f"workers stalled at {consumed:.0f} of {expected:.0f} events for {STALL_S:.0f} s; "
                f"see {fleet.procs[0].log_path}"
            )
        for proc in fleet.procs:
            proc.check_alive()
        samples = await _scrape_all(fleet.ports)
        now = time.perf_counter()
        consumed = _total(samples, "nudge_events_consumed_total")
        if consumed != progress[1]:
            progress = (time.monotonic(), consumed)
        if start is None and consumed > 0:
            start = (now, consumed, [p.cpu_s() or 0.0 for p in fleet.procs])
        if consumed >= expected and start is not None:
            t0, c0, cpu0 = start
            cpu = sum((p.cpu_s() or 0.0) - c for p, c in zip(fleet.procs, cpu0, strict=True))
            events = consumed - c0
            seconds = max(1e-9, now - t0)
            return {
                "events": int(consumed),
                "seconds": round(seconds, 3),
                "events_per_s": round(events / seconds) if events > 0 else None,
                "cpu_s_per_1k": round(cpu / events * 1000, 4) if events > 0 and measure_cpu else None,
                "actions": int(_total(samples, "nudge_rule_fires_total")),
                "dead_letters": int(_total(samples, "nudge_dead_letters_total")),
            }
        await asyncio.sleep(POLL_S)
    raise BenchError(f"workers consumed {consumed:.0f} of {expected:.0f} events in {timeout_s} s")


async def _state_figures(fleet: WorkerFleet) -> dict[str, Any]:
    """State gauges are refreshed every 5 s by the worker's timer: wait for one refresh, then read them."""
    await asyncio.sleep(5.5)
    samples = await _scrape_all(fleet.ports)
    leads = _total(samples, "nudge_active_leads")
    state = _total(samples, "nudge_state_bytes")
    return {
        "active_leads": int(leads),
        "state_bytes": int(state),
        "state_bytes_per_lead": round(state / leads, 1) if leads else None,
        "pending_deadlines": int(_total(samples, "nudge_pending_deadlines")),
        "rss_bytes": [p.rss_bytes() for p in fleet.procs],
    }


class _WorkerProbe:
    def __init__(self, ctx: RunContext, fleet: WorkerFleet, backlog: int) -> None:
        self.ctx, self.fleet, self.backlog = ctx, fleet, backlog

    def check_alive(self) -> None:
        for proc in self.fleet.procs:
            proc.check_alive()

    async def sample(self) -> steady.Sample:
        """The workers' own `nudge_events_consumed_total` (scraped in parallel) and their CPU from /proc. A scrape
        that fails (a busy worker can miss the 2 s timeout) is retried: a missing worker would read as a drop."""
        for _ in range(10):
            samples = await _scrape_all(self.fleet.ports)
            if all(samples):
                break
            self.check_alive()
            await asyncio.sleep(0.3)
        else:
            raise BenchError(f"a worker's /metrics did not answer; see {self.fleet.procs[0].log_path}")
        now = time.monotonic()
        cpu = tuple(p.cpu_s() or 0.0 for p in self.fleet.procs)
        consumed = _total(samples, "nudge_events_consumed_total")
        return steady.Sample(now, consumed, cpu, _group_joins(self.fleet), **_context(self.ctx))


async def measure_worker(
    ctx: RunContext,
    backlog: Backlog,
    plan: steady.Plan,
    workers: int = 1,
    label: str = "worker",
    state_after: int | None = None,
    rules_path: Path | None = None,
) -> dict[str, Any]:
    """(3)/(6)/(7): `workers` worker processes on the shared backlog, steady-state windows; with `state_after`,
    then (5): state per active lead and RSS, read from the state gauges once the workers consumed at least
    `state_after` events (one lap of the workload: every lead seen)."""
    settings = ctx.settings(label, **({"rules_path": rules_path} if rules_path else {}))
    await create_inputs(ctx, settings)
    fleet = await start_workers(ctx, settings, workers, label, extra_env={"BENCH_CLICKSTREAM_TOPIC": backlog.topic})
    try:
        result = await steady.measure_windows(_WorkerProbe(ctx, fleet, backlog.valid), plan)
        result["workers"] = workers
        result["rss_bytes"] = [p.rss_bytes() for p in fleet.procs]
        if state_after is not None:
            probe = _WorkerProbe(ctx, fleet, backlog.valid)
            target = min(state_after, backlog.valid)

            async def lap_done() -> bool:
                return (await probe.sample()).consumed >= target

            await steady.wait_for(lap_done, 300.0, f"the workers did not consume {target} events")
            result["state"] = await _state_figures(fleet)
        result["group_joins"] = _group_joins(fleet)
    finally:
        fleet.stop()
    return result


def _group_joins(fleet: WorkerFleet) -> int:
    """Consumer-group joins seen in the workers' logs: one per worker when no rebalance disturbed the run. With
    the `batched` profile a rebalance recovers state through Tansu's end-offset bug (dev-stack.md), which drops
    the tail of each changelog partition's last batch; then the state figures count fewer leads."""
    return sum(proc.log_text().count("Joined group") for proc in fleet.procs)


# --- (4) latency under load ------------------------------------------------------------
def _rule_kinds(rules_path: Path) -> dict[str, str]:
    from engine.language import load_rules

    return {rule.id: rule.kind for rule in load_rules([rules_path]).rules}


async def measure_latency(
    ctx: RunContext,
    workload: Workload,
    rate: float,
    duration_s: float,
    compress: int = 600,
    allowed_lateness_s: float | None = None,
) -> dict[str, Any]:
    """Offer `rate` events/s for `duration_s`, stamped with the wall clock; see the module docstring."""
    rules_dir = ctx.workdir / "rules-compressed"
    windows = compressed_pack(SHIPPED, rules_dir, compress)
    kinds = _rule_kinds(rules_dir)
    settings = ctx.settings("latency", rules_path=rules_dir)
    if allowed_lateness_s is not None:
        settings = settings.with_(allowed_lateness_s=allowed_lateness_s)
    allowed_lateness_s = settings.allowed_lateness_s  # the shipped default unless overridden
    topic = await create_inputs(ctx, settings)
    records = list(laps(workload, int(rate * duration_s)))
    fleet = await start_workers(ctx, settings, 1, "latency")
    try:
        async with kafka_io.output_watcher(ctx.stack.bootstrap, [settings.topic("actions")]) as watcher:
            worker_cpu, bench_cpu = fleet.procs[0].cpu_s() or 0.0, time.process_time()
            broker_cpu = steady.proc_cpu_s(ctx.broker_pid) or 0.0
            paced = await kafka_io.produce_paced(ctx.stack.bootstrap, topic, records, rate)
            load_s = max(1e-9, (paced.ended_wall_ms - paced.started_wall_ms) / 1000)
            # Busy share of one core while the load was on: near 1.0 means the worker was saturated.
            worker_busy = ((fleet.procs[0].cpu_s() or 0.0) - worker_cpu) / load_s
            bench_busy = (time.process_time() - bench_cpu) / load_s
            broker_busy = ((steady.proc_cpu_s(ctx.broker_pid) or 0.0) - broker_cpu) / load_s
            valid = sum(1 for r in records if r.valid)
            drained = await _consume_all(fleet, valid, timeout_s=120, measure_cpu=False)
            # Deadlines that fell due during the load may still be in flight: give them lateness + 2 s.
            await asyncio.sleep(allowed_lateness_s + 2.0)
            arrivals = list(watcher.records)
    finally:
        fleet.stop()
    lateness_ms = int(allowed_lateness_s * 1000)
    event_latency: list[float] = []
    to_output: list[float] = []  # from the event's stamp to the action's record timestamp (the worker's append)
    deadline_lag: list[float] = []  # wall clock from the deadline to the action's arrival on `actions`
    deadline_to_output: list[float] = []
    delivered: list[float] = []  # from the action's record timestamp to its arrival at the watcher
    for arrival in arrivals:
        action = orjson.loads(arrival.value)
        kind = kinds.get(action["rule"])
        if kind == "threshold" and action.get("trigger_time_ms"):
            event_latency.append((arrival.arrived_ms - action["trigger_time_ms"]) / 1000)
            to_output.append((arrival.timestamp_ms - action["trigger_time_ms"]) / 1000)
            delivered.append((arrival.arrived_ms - arrival.timestamp_ms) / 1000)
        elif kind == "absence" and action["fired_at_ms"] + lateness_ms <= paced.ended_wall_ms:
            deadline_lag.append((arrival.arrived_ms - action["fired_at_ms"]) / 1000)
            deadline_to_output.append((arrival.timestamp_ms - action["fired_at_ms"]) / 1000)
            delivered.append((arrival.arrived_ms - arrival.timestamp_ms) / 1000)
    return {
        "offered_events_per_s": round(rate),
        "achieved_events_per_s": round(paced.achieved_rate),
        "events_sent": paced.sent,
        "load_seconds": round((paced.ended_wall_ms - paced.started_wall_ms) / 1000, 1),
        "drain_seconds_after_load": drained["seconds"],
        "worker_cpu_busy_during_load": round(worker_busy, 3),
        "load_generator_cpu_busy_during_load": round(bench_busy, 3),
        "broker_cpu_busy_during_load": round(broker_busy, 3),
        "actions": len(arrivals),
        "allowed_lateness_s": allowed_lateness_s,
        "compressed_absence_windows_ms": windows,
        "event_to_action_s": percentiles(event_latency),
        "deadline_lag_s": percentiles(deadline_lag),
        "deadline_lag_beyond_lateness_s": percentiles([lag - allowed_lateness_s for lag in deadline_lag]),
        # Where the time goes: until the worker appended the action to a produce batch, then to the watcher.
        "event_to_output_s": percentiles(to_output),
        "deadline_to_output_s": percentiles(deadline_to_output),
        "output_to_arrival_s": percentiles(delivered),
    }


# --- profile ---------------------------------------------------------------------------------------------
async def profile_worker(ctx: RunContext, workload: Workload, timeout_s: float) -> dict[str, Any]:
    """A worker throughput run sampled by py-spy from the first produced record to the last consumed one."""
    from bench.profiling import Sampler, summarise

    settings = ctx.settings("profile")
    topic = await create_inputs(ctx, settings)
    fleet = await start_workers(ctx, settings, 1, "profile")
    out = ctx.workdir / "profile-worker.txt"
    try:
        sampler = Sampler(fleet.procs[0].pid, out)
        try:
            await kafka_io.produce(ctx.stack.bootstrap, topic, workload.records)
            result = await _consume_all(fleet, workload.valid, timeout_s)
        finally:
            errors = sampler.stop()
    finally:
        fleet.stop()
    summary = summarise(out)
    if errors.strip() and not summary["samples"]:
        raise BenchError(f"py-spy failed: {errors}")
    keep = Path(__file__).resolve().parent / "results" / "profile-worker.txt"
    keep.write_bytes(out.read_bytes())
    return {"events_per_s_while_sampled": result["events_per_s"], "collapsed_stacks": str(keep), **summary}


# --- (8) state at store scale -------------------------------------------------------------------------------------
async def measure_store_scale(ctx: RunContext, store: str, leads: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """(8): one worker with Faust's `store` (`memory://` as shipped, or `rocksdb://` served by rocksdict) given
    state for `leads` leads (one event each, `workload.one_event_per_lead`); then state per lead and RSS, and
    the restart-to-ready time: SIGTERM, a new process with the same app id and state directory, until it logs
    that its partitions are recovered and its deadline index rebuilt. With the `batched` profile the restarted
    worker recovers through Tansu's end-offset bug (dev-stack.md): it can miss the tail of each changelog
    partition's last batch, so compare `active_leads` before and after."""
    from bench.workload import one_event_per_lead

    label = "store-" + store.split(":")[0]
    settings = ctx.settings(label)
    backlog = Backlog(f"{settings.topic_prefix}backlog")
    fill = await backlog.fill(ctx, one_event_per_lead(leads))
    await create_inputs(ctx, settings)
    env = {"BENCH_CLICKSTREAM_TOPIC": backlog.topic, "BENCH_STORE": store}
    started = time.monotonic()
    fleet = await start_workers(ctx, settings, 1, label, extra_env=env)
    result: dict[str, Any] = {"store": store, "leads": leads, "produce_seconds": fill["seconds"]}
    try:
        probe = _WorkerProbe(ctx, fleet, backlog.valid)

        async def all_consumed() -> bool:
            return (await probe.sample()).consumed >= backlog.valid

        await steady.wait_for(all_consumed, timeout_s, f"{label}: the worker did not consume {backlog.valid} events")
        result["fill_seconds"] = round(time.monotonic() - started, 1)
        result["cpu_s"] = fleet.procs[0].cpu_s()
        result["before_restart"] = await _state_figures(fleet)
        await asyncio.sleep(2.0)  # let the last changelog batch and offsets be committed
    finally:
        fleet.stop()
    # Twice: the first restart replays what the last recovery did not cover; the second shows a restart with
    # nothing new since the previous recovery (what a store with persisted offsets replays: see store_patch.py).
    for n, key in ((1, "restart_to_ready_s"), (2, "second_restart_to_ready_s")):
        restarted = time.monotonic()
        try:
            fleet = await start_workers(ctx, settings, 1, f"{label}-restart{n}", extra_env=env,
                                        ready_timeout_s=timeout_s)
        except (BenchError, ChildFailed) as exc:  # keep the figures so far, say why the restart failed
            result[key] = None
            result[f"restart{n}_error"] = str(exc).splitlines()[0][:500]
            break
        try:
            result[key] = round(time.monotonic() - restarted, 1)
            result["after_restart"] = await _state_figures(fleet)
            result["after_restart"]["index_log"] = next(
                (line[line.index("deadline index"):] for line in fleet.procs[0].log_text().splitlines()
                 if "deadline index rebuilt" in line), None)
        finally:
            fleet.stop()
    before = result["before_restart"]
    rss = max((r for r in before["rss_bytes"] if r), default=0)
    result["rss_bytes_per_lead"] = round(rss / before["active_leads"]) if before["active_leads"] else None
    return result
