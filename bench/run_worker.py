"""`python -m bench.run_worker`: `nudge worker` with the benchmark's broker profile (BENCH_BROKER_PROFILE).

Settings come from NUDGE_* variables exactly as for `nudge worker`; only the broker profile may be swapped
(see bench/profiles.py), and BENCH_CLICKSTREAM_TOPIC names the input topic when it is not the prefixed
`clickstream` (every step of a run reads one shared backlog with its own consumer group, state and outputs).
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
