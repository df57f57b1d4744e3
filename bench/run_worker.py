"""`python -m bench.run_worker`: `nudge worker` with the benchmark's broker profile (BENCH_BROKER_PROFILE).

Settings come from NUDGE_* variables exactly as for `nudge worker`; only the broker profile may be swapped
(see bench/profiles.py), and experimental patches applied when BENCH_PATCHES names them (see
bench/patches.py; never in a default run). Everything else is the shipped worker.
"""

from __future__ import annotations

import os
import sys

from bench import patches, profiles


def main() -> int:
    profiles.apply(os.environ.get("BENCH_BROKER_PROFILE", "dev"))
    patches.apply(os.environ.get("BENCH_PATCHES", ""))  # experiments only: see bench/patches.py
    from engine.commands.worker import run_worker
    from engine.config import Settings

    return run_worker(Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())
