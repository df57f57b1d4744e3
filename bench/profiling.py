"""Where the worker's time goes: sample a running worker with py-spy and summarise the stacks.

Contract: `Sampler(pid, out)` attaches `py-spy record --pid` (non-blocking: the worker is not paused) in raw
"collapsed stack" format; `stop()` interrupts it (SIGINT, which makes py-spy write its file) and waits.
`summarise(path)` reads the collapsed stacks and returns the share of samples per cost centre (inclusive:
a sample counts for the first bucket, in the order of `BUCKETS`, that any frame of its stack matches) and
the top functions by self time. Needs py-spy (dev extra) and the right to ptrace the worker.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (cost centre, substrings of a frame "function (file:line)"); first match wins, so specific ones go first.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("logging (records, tracebacks)", ("logging/", "colorlog/", "traceback.py", "linecache.py")),
    ("/metrics page (benchmark scrapes)", ("_metrics_page", "generate_latest")),
    ("state gauges scan (_refresh_stats)", ("_refresh_stats",)),
    ("rule evaluation (engine.core)", ("engine/core/", "engine/language/")),
    ("event parsing (parse_event)", ("engine/events.py",)),
    ("state (de)serialisation", ("to_bytes (engine", "from_bytes (engine")),
    ("table write + changelog send", ("tables/", "send_changelog", "faust/tables")),
    ("action / dead-letter / tick sends", ("_emit (engine", "_dead_letter (engine", "_fire_due_deadlines")),
    ("Prometheus metric updates", ("prometheus_client",)),
    ("worker shell (engine.worker.lead_worker)", ("engine/worker/lead_worker.py", "engine/worker/deadlines.py")),
    ("producer (aiokafka send path)", ("aiokafka/producer",)),
    ("consumer fetch + decode (aiokafka)", ("aiokafka/consumer", "aiokafka/record", "aiokafka/conn")),
    ("Faust stream/consumer machinery", ("faust/streams", "faust/transport", "faust/channels",
                                         "faust/topics", "faust/agents", "mode/")),
    ("event loop (uvloop, C) / other", ("",)),
]


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy attached to one running process; see the module docstring."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: `.venv/bin/pip install py-spy` (dev extra)")
        self.out = out
        self._proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )

    def stop(self, timeout_s: float = 30.0) -> str:
        """Stop sampling; returns py-spy's stderr (empty when all went well)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        return (err or b"").decode(errors="replace")[-2000:]


def _bucket(frames: list[str]) -> str:
    for name, needles in BUCKETS:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    return BUCKETS[-1][0]


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    buckets: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError), path.open(errors="replace") as lines:
        for line in lines:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            buckets[_bucket(frames)] += count
            self_time[frames[-1]] += count
    share = {name: round(100 * n / total, 1) for name, n in buckets.most_common()} if total else {}
    leaves = [(frame, round(100 * n / total, 1)) for frame, n in self_time.most_common(top)] if total else []
    return {"samples": total, "share_percent": share, "top_self_percent": leaves}
