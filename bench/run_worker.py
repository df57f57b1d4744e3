"""`python -m bench.run_worker`: `nudge worker` with the benchmark's broker profile (BENCH_BROKER_PROFILE).

Settings come from NUDGE_* variables exactly as for `nudge worker`; only these may differ (bench-only knobs):
- the broker profile (see bench/profiles.py);
- BENCH_STORE: Faust's table store, e.g. `rocksdb://` (which Faust serves with `rocksdict`; with the
  bench-only write-path patch of bench/store_patch.py), for the store-scale measurement; default the shipped
  `memory://`;
- BENCH_CLICKSTREAM_TOPIC: the input topic when it is not the prefixed `clickstream` (every step of a run reads
  one shared backlog with its own consumer group, state and outputs).
Everything else is the shipped worker.
"""

from __future__ import annotations

import os
import sys

from bench import profiles


def main() -> int:
    profiles.apply(os.environ.get("BENCH_BROKER_PROFILE", "dev"))
    import dataclasses

    from engine.commands.worker import run_worker
    from engine.config import Settings
    from engine.kafka.topics import CLICKSTREAM

    settings = Settings.from_env()
    store = os.environ.get("BENCH_STORE")
    if store:
        from engine.worker.faust_ext import broker_profiles

        if store.startswith("rocksdb"):
            from bench import store_patch

            store_patch.install()
        shipped = broker_profiles.PROFILES[settings.broker_profile]
        broker_profiles.PROFILES[settings.broker_profile] = lambda: {**shipped(), "store": store}
    shared = os.environ.get("BENCH_CLICKSTREAM_TOPIC")
    if shared:

        @dataclasses.dataclass(frozen=True)
        class BenchSettings(Settings):
            def topic(self, name: str) -> str:
                return shared if name == CLICKSTREAM else super().topic(name)

        settings = BenchSettings(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)})
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
