"""Steady-state throughput windows: how every throughput step of `python -m bench` is measured.

Contract:
- A step reads a pre-filled backlog (sized from a calibration so that it outlasts the step, see
  `backlog_events`), so no load generator runs while a window is measured.
- `measure_windows(probe, plan)` waits until the measured processes make progress and their consumer-group
  membership has been quiet for `plan.warm_s` (start-up, group joins and recovery are excluded), then measures
  `plan.repetitions` consecutive windows of `plan.window_s` each. Every window is computed from two samples
  taken at its edges (events consumed by the processes' own counters, CPU seconds from /proc), never from the
  first poll that saw progress.
- A window is flagged `short` when it lasted less than asked or the backlog ran out before it ended,
  `rebalance` when a consumer group joined during it, `no progress` when nothing was consumed, and
  `below minimum` when the asked window itself is under `MIN_WINDOW_S` (quick runs), `contended` when other
  users of the machine took more than `CONTENDED_CORES` cores during it (their load decides which measured
  process gets a core, so rates and their ratios turn into luck): a flagged window makes the step, and
  `make bench`, invalid (see bench/README.md).
- `summarise(windows)` gives the median, min, max and spread (max - min over median) of events/s, the median
  CPU-s per 1k events and its spread, with the union of the windows' flags.
- Beside the measured processes, each window reports the broker's and the harness's CPU, the machine's total
  busy cores (process time) and its interrupt/softirq time (loopback networking), so "two workers on two shared
  cores" is read against what else ran ("others" is the machine's process time not accounted to the measured
  processes, the broker or the harness: other users).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

CONTENDED_CORES = 0.5  # other users' CPU in a window beyond which the window's figures are not trusted
MIN_WINDOW_S = 20.0  # the floor for a trustworthy window; quick runs are flagged "below minimum"
POLL_S = 2.0  # progress polls inside a window (a /metrics scrape costs the worker CPU: keep them rare)
STALL_S = 45.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class MeasurementError(RuntimeError):
    """A window could not be measured (processes stalled or died); the message says why."""


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process from /proc (None if it is gone)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu_s() -> tuple[float, float, float]:
    """(busy, total, interrupts) CPU seconds of the whole machine since boot, summed over cores (/proc/stat).
    `busy` leaves out interrupt and softirq time (loopback networking between the measured processes and the
    broker lands there, attributed to no process): that is `interrupts`."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0, 0.0, 0.0
    values = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    irq = values[5] + values[6]
    return (sum(values) - idle - irq) / CLOCK_TICKS, sum(values) / CLOCK_TICKS, irq / CLOCK_TICKS


@dataclass(frozen=True)
class Sample:
    """Counters at one instant: events consumed and CPU seconds of the measured processes, and context."""

    t: float  # time.monotonic() (system-wide on Linux: comparable with a child's own stamps)
    consumed: float
    cpu_s: tuple[float, ...]  # one per measured process
    joins: int  # consumer-group joins seen so far (logs); a change inside a window is a rebalance
    broker_cpu_s: float = 0.0
    harness_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    machine_irq_s: float = 0.0


class Probe(Protocol):
    """What a step measures: its processes' counters (`sample`) and the events its backlog holds."""

    backlog: int  # events the measured processes can consume before the backlog runs out

    async def sample(self) -> Sample: ...

    def check_alive(self) -> None: ...


@dataclass(frozen=True)
class Plan:
    repetitions: int = 3
    window_s: float = 20.0
    warm_s: float = 5.0
    start_timeout_s: float = 120.0


def context_sample(broker_pid: int | None) -> dict[str, float]:
    """The broker's, the harness's (this process) and the machine's CPU seconds, for `Sample`."""
    busy, _, irq = machine_cpu_s()
    return {
        "broker_cpu_s": proc_cpu_s(broker_pid) or 0.0,
        "harness_cpu_s": time.process_time(),
        "machine_busy_s": busy,
        "machine_irq_s": irq,
    }


def window(s0: Sample, s1: Sample, asked_s: float, exhausted: bool = False) -> dict[str, Any]:
    """One window's figures from the samples at its edges, with its flags (see the module docstring)."""
    seconds = max(1e-9, s1.t - s0.t)
    events = s1.consumed - s0.consumed
    cpu = [b - a for a, b in zip(s0.cpu_s, s1.cpu_s, strict=True)]
    flags = []
    if exhausted or seconds < asked_s * 0.98 - 0.3:  # a child's own stamps may be up to 0.2 s old
        flags.append("short")
    if s1.joins != s0.joins:
        flags.append("rebalance")
    if events <= 0:
        flags.append("no progress")
    if asked_s < MIN_WINDOW_S:
        flags.append("below minimum")
    measured_busy = sum(cpu) / seconds
    broker_busy = (s1.broker_cpu_s - s0.broker_cpu_s) / seconds
    harness_busy = (s1.harness_cpu_s - s0.harness_cpu_s) / seconds
    machine_busy = (s1.machine_busy_s - s0.machine_busy_s) / seconds
    others = machine_busy - measured_busy - broker_busy - harness_busy
    if s1.machine_busy_s and others > CONTENDED_CORES:
        flags.append("contended")
    return {
        "seconds": round(seconds, 3),
        "events": int(events),
        "events_per_s": round(events / seconds) if events > 0 else 0,
        "cpu_s_per_1k": round(sum(cpu) / events * 1000, 4) if events > 0 else None,
        "cores_busy": {
            "measured": [round(c / seconds, 3) for c in cpu],
            "broker": round(broker_busy, 3),
            "harness": round(harness_busy, 3),
            "machine": round(machine_busy, 3),
            "interrupts": round((s1.machine_irq_s - s0.machine_irq_s) / seconds, 3),
            "others": round(max(0.0, others), 3),
        },
        "flags": flags,
    }


def summarise(windows: Sequence[dict[str, Any]], asked: int) -> dict[str, Any]:
    """Median, min, max and spread of the windows' rates (see the module docstring)."""
    rates = [w["events_per_s"] for w in windows]
    cpus = [w["cpu_s_per_1k"] for w in windows if w["cpu_s_per_1k"] is not None]
    missing = {"missing repetitions"} if len(windows) < asked else set()
    flags = sorted({f for w in windows for f in w["flags"]} | missing)
    median = statistics.median(rates) if rates else 0
    cores = [w["cores_busy"] for w in windows]

    def median_of(key: str) -> float | None:
        values = [c[key] for c in cores]
        return round(statistics.median(values), 3) if values else None

    return {
        "events_per_s": round(median) if rates else None,
        "events_per_s_min": min(rates) if rates else None,
        "events_per_s_max": max(rates) if rates else None,
        "spread": round((max(rates) - min(rates)) / median, 3) if rates and median else None,
        "cpu_s_per_1k": round(statistics.median(cpus), 4) if cpus else None,
        "cpu_spread": round((max(cpus) - min(cpus)) / statistics.median(cpus), 3) if cpus else None,
        "cores_busy": {
            "measured_total": round(statistics.median([sum(c["measured"]) for c in cores]), 3) if cores else None,
            "broker": median_of("broker"),
            "harness": median_of("harness"),
            "machine": median_of("machine"),
            "interrupts": median_of("interrupts"),
            "others": median_of("others"),
        },
        "repetitions": len(windows),
        "window_s": windows[0]["seconds"] if windows else None,
        "windows": list(windows),
        "flags": flags,
        "valid": not flags,
    }


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.5)
    raise MeasurementError(f"{what} within {timeout_s:.0f} s")


@dataclass
class _Progress:
    last: Sample | None = None
    since: float = field(default_factory=time.monotonic)

    def update(self, s: Sample) -> None:
        if self.last is None or s.consumed != self.last.consumed:
            self.since = s.t
        self.last = s


async def measure_windows(probe: Probe, plan: Plan) -> dict[str, Any]:
    """Warm up, then `plan.repetitions` windows of `plan.window_s`; the step's summary (see `summarise`)."""
    progress = _Progress()

    async def sample() -> Sample:
        probe.check_alive()
        s = await probe.sample()
        progress.update(s)
        if s.t - progress.since > STALL_S and s.consumed < probe.backlog:
            raise MeasurementError(f"no progress for {STALL_S:.0f} s at {s.consumed:.0f} of {probe.backlog} events")
        return s

    async def consuming() -> bool:
        return (await sample()).consumed > 0

    await wait_for(consuming, plan.start_timeout_s, "no event consumed")
    # Warm-up: progress and no group join for warm_s (a later worker's join rebalances the others).
    quiet_since, joins = time.monotonic(), (await sample()).joins
    warm_deadline = time.monotonic() + plan.start_timeout_s
    while time.monotonic() - quiet_since < plan.warm_s:
        if time.monotonic() > warm_deadline:
            raise MeasurementError(f"consumer group never quiet for {plan.warm_s} s")
        await asyncio.sleep(min(POLL_S, plan.warm_s))
        s = await sample()
        if s.joins != joins:
            quiet_since, joins = time.monotonic(), s.joins
    windows = []
    for _ in range(plan.repetitions):
        s0 = await sample()
        end = s0.t + plan.window_s
        exhausted = False
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(POLL_S, left))
            if time.monotonic() < end:
                s = await sample()
                exhausted = exhausted or s.consumed >= probe.backlog
        s1 = await sample()
        exhausted = exhausted or s1.consumed >= probe.backlog
        windows.append(window(s0, s1, plan.window_s, exhausted))
        if exhausted:
            break
    return summarise(windows, plan.repetitions)


def backlog_events(rate: float, plan: Plan, safety: float = 1.3, slack_s: float = 5.0) -> int:
    """Events a backlog needs so that a step consuming `rate` events/s outlasts warm-up and every window
    (plus `slack_s` for the polls' lag around them), with a safety factor for a faster step."""
    return int(rate * (plan.warm_s + plan.repetitions * plan.window_s + slack_s) * safety)


def estimate_seconds(plan: Plan, startup_s: float = 8.0) -> float:
    """Wall time of one step: start-up, warm-up, windows, a poll's lag per window."""
    return startup_s + plan.warm_s + plan.repetitions * (plan.window_s + 0.5)
