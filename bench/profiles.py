"""Broker profiles the benchmark can run the worker (and the naive agent) with, on the Tansu dev broker.

- `dev`: exactly the shipped `dev` profile (engine/worker/faust_ext/broker_profiles.py): one record per producer
  batch, which keeps changelog recovery correct on Tansu (bug 1) at a cost in throughput. What CI and the demo run.
- `batched`: normal producer batching (the `kafka` profile's linger and batch size) plus the dev profile's
  short group sessions (Tansu bug 2 only slows joins, not processing). Valid for a benchmark that never
  restarts a worker; it is what a deployment on real Kafka gets.

`apply(name)` installs the profile in this process before the Faust app is built; the worker launcher
(`bench/run_worker.py`) and the naive agent (`bench/naive_app.py`) call it from BENCH_BROKER_PROFILE.
"""

from __future__ import annotations

from typing import Any

PROFILES = ("dev", "batched")
DESCRIPTIONS = {
    "dev": "shipped dev profile: one record per producer batch (Tansu end-offset workaround), as in CI",
    "batched": "normal producer batching (linger 50 ms, 1 MiB batches) + short group sessions; valid for "
    "throughput because no worker restarts during a measurement",
}
_MIB = 1024 * 1024


def batched_overrides() -> dict[str, Any]:
    return {"producer_linger": 0.05, "producer_max_batch_size": _MIB}


def apply(name: str) -> None:
    """Make `NUDGE_BROKER_PROFILE=dev` mean the named benchmark profile in this process."""
    if name not in PROFILES:
        raise ValueError(f"BENCH_BROKER_PROFILE={name!r} is not one of {', '.join(PROFILES)}")
    if name == "batched":
        from engine.worker.faust_ext import broker_profiles as faust_settings

        dev = faust_settings.PROFILES["dev"]
        faust_settings.PROFILES["dev"] = lambda: {**dev(), **batched_overrides()}
