"""Run real Nudge processes (`nudge worker`, `nudge collector`, ...) as subprocesses for the live PromQL test.

Contract:
- `NudgeProcess(job, args, env, metrics_port, log)` starts `python -m engine <args>` with exactly `env` (plus
  PATH), output to `log`, in its own session. `wait_metrics()` polls `/metrics` on `metrics_port` until it
  answers 200, or raises with the tail of the log (also when the process exited early).
- `stop()` sends SIGTERM, then SIGKILL after a grace period; it only ever signals the process it started.
- `declared_metrics(text)` lists the sample names a `/metrics` body can contain (from its `# TYPE` lines), so
  a test can tell "exported, no sample yet" from "not exported at all".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .queries import ROOT

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


class NudgeProcess:
    def __init__(self, job: str, args: list[str], env: dict[str, str], metrics_port: int, log: Path) -> None:
        self.job = job
        self.args = args
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **env}
        self.metrics_port = metrics_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def start(self) -> NudgeProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", *self.args], env=self.env, cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def metrics(self, timeout_s: float = 2.0) -> str:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=timeout_s) as response:
            return response.read().decode()

    def wait_metrics(self, timeout_s: float = 45.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"`nudge {' '.join(self.args)}` exited ({code}); log:\n{self.log_tail()}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"`nudge {' '.join(self.args)}` served no /metrics on {self.target} within "
                           f"{timeout_s:.0f} s; log:\n{self.log_tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


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
