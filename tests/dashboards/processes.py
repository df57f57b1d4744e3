"""Run real Nudge processes (`nudge worker`, `nudge collector`, ...) as subprocesses for the live PromQL test.

Contract:
- `NudgeProcess(job, args, env, metrics_port, log)` is an `engine.testing.ChildProcess` running
  `python -m engine <args>` with exactly `env` (plus PATH), from the repository root. `wait_metrics()` polls
  `/metrics` on `metrics_port` until it answers 200, or raises with the tail of the log (also when the process
  exited early). `stop()` sends SIGTERM, then SIGKILL after a grace period; it only ever signals the process it
  started.
- `declared_metrics(text)` lists the sample names a `/metrics` body can contain (from its `# TYPE` lines), so
  a test can tell "exported, no sample yet" from "not exported at all".
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

from engine.testing import ChildProcess

from .queries import ROOT

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


class NudgeProcess(ChildProcess):
    def __init__(self, job: str, args: list[str], env: dict[str, str], metrics_port: int, log: Path) -> None:
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **env}
        super().__init__(job, [sys.executable, "-m", "engine", *args], full_env, log, cwd=ROOT)
        self.args = args
        self.metrics_port = metrics_port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def metrics(self, timeout_s: float = 2.0) -> str:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=timeout_s) as response:
            return response.read().decode()

    def answers(self) -> bool:
        try:
            self.metrics()
        except OSError:
            return False
        return True

    def wait_metrics(self, timeout_s: float = 45.0) -> None:
        asyncio.run(self.wait_until(self.answers, timeout_s, f"/metrics on {self.target}", poll_s=0.2))

    def stop(self, grace_s: float = 10.0) -> int | None:
        return super().stop(grace_s)


def declared_metrics(text: str) -> set[str]:
    """Sample names a /metrics body can contain: from its `# TYPE` lines, whether or not samples exist yet."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.update(name + suffix for suffix in SAMPLE_SUFFIXES.get(kind, ("",)))
            if kind == "counter" and name.endswith("_total"):  # older exposition keeps the suffix in TYPE
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
