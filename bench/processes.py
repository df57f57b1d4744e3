"""Sub-processes under measurement: start, wait until ready, read CPU time, RSS and Prometheus metrics, stop.

Contract of `Proc`:
- `start()` launches the command with the given environment, stdout+stderr appended to `log_path`, in its own
  session (so stopping it never signals the benchmark).
- `cpu_s()` is user+system CPU seconds of the process so far, from /proc/<pid>/stat (clock ticks);
  `rss_bytes()` is its resident set size from /proc/<pid>/status. Both are None once it has exited.
- `wait_for_log(mark, timeout)` polls the log with a deadline; a process that dies first raises
  `BenchError` with the tail of its log.
- `stop()` sends SIGTERM, waits `grace_s`, then SIGKILL: only this process (and its session) is signalled.

`scrape(port)` fetches `/metrics` from a worker and returns {sample name: value}, labels summed away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step could not run; the message says which and where its log is."""


class Proc:
    """One measured sub-process; see the module docstring."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} was not started")
        return self.proc.pid

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited early; log {self.log_path}:\n{self.log_tail()}")

    def wait_for_log(self, mark: str, timeout_s: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if self.log_path.read_text(errors="replace").count(mark) >= count:
                    return
            self.check_alive()
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not log {mark!r} within {timeout_s} s; log {self.log_path}")

    def cpu_s(self) -> float | None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        return None

    def rss_bytes(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


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
