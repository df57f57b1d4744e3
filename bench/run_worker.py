"""`python -m bench.run_worker`: `nudge worker` with the benchmark's broker profile (BENCH_BROKER_PROFILE).

Settings come from NUDGE_* variables exactly as for `nudge worker`; only the broker profile may be swapped
(see bench/profiles.py). Everything else is the shipped worker.
"""

from __future__ import annotations

import os
import sys

from bench import profiles


def main() -> int:
    profiles.apply(os.environ.get("BENCH_BROKER_PROFILE", "dev"))
    from engine.commands.worker import run_worker
    from engine.config import Settings

    return run_worker(Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())
