"""Child processes of the demo (`nudge worker`, `nudge dispatch`, `nudge sink`): started with the demo's
settings as NUDGE_* variables, logging to a file each, stopped gracefully.

Contract: `ChildProcess.start()` spawns in its own session (a Ctrl-C in the terminal reaches only the demo,
which then stops its children in order: sources of data last); `stop()` sends SIGTERM, waits up to `grace_s`,
then SIGKILLs. `wait_for_log(text)` polls the log with a deadline and fails with the log's tail when the
process died or the text did not appear. Never leaves a process behind when `stop()` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class ChildFailed(RuntimeError):
    """A child process died or did not become ready; the message holds the tail of its log."""


def nudge_executable() -> list[str]:
    """The `nudge` console script next to this interpreter, else `python -m engine`."""
    script = Path(sys.executable).with_name("nudge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


class ChildProcess:
    """One `nudge <args>` sub-process with its own log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*nudge_executable(), *self.args],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def check_alive(self) -> None:
        if self.proc is not None and not self.alive():
            raise ChildFailed(
                f"`nudge {' '.join(self.args)}` exited with code {self.proc.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    async def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if text in self.log_path.read_text(errors="replace"):
                    return
            self.check_alive()
            await asyncio.sleep(0.1)
        raise ChildFailed(
            f"{self.name} not ready after {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
