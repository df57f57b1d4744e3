"""Nudge's harness for running real components side by side: shared by the tests, `bench/` and `nudge demo`.

Nudge is tested against real services (a Kafka-protocol broker, Redis, chDB, HTTP and SMTP peers on loopback),
never mocks. The pieces every such test needs live here, once:

- `TopicReader` reads Kafka topics from the beginning in the background and keeps what arrived (with the wall
  clock of its arrival, for latency figures); `CommittedOffsets` reads a consumer group's committed offsets.
- `ChildProcess` runs one sub-process (`nudge worker`, a benchmark worker, ...) with its own log file: start,
  wait until it logs a line, CPU time and RSS, stop with SIGTERM then SIGKILL.
- `RecordingPeer` is an HTTP server on loopback that records every request and answers with the statuses it was
  given (a script, then a default), optionally holding requests to play a hung peer.
- `wait_until` polls a condition with a deadline, so nothing waits by sleeping a fixed time.

Each class states its contract on itself. Nothing here is used by the running engine (`nudge worker`,
`nudge dispatch`, ...); `nudge demo` uses it to drive those processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from engine.config import Settings

__all__ = [
    "ChildFailed",
    "ChildProcess",
    "CommittedOffsets",
    "PeerRequest",
    "RecordingPeer",
    "TopicReader",
    "TopicRecord",
    "nudge_command",
    "wait_until",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def wait_until(
    ready: Callable[[], object],
    timeout_s: float = 15.0,
    what: str = "condition",
    *,
    poll_s: float = 0.05,
    detail: Callable[[], object] | None = None,
    off_loop: bool = False,
) -> None:
    """Return as soon as `ready()` is truthy; raise `TimeoutError` naming `what` after `timeout_s`.

    `ready` may be a plain callable or return an awaitable (an async check). It is called at once, then every
    `poll_s`; with `off_loop` in a worker thread, for a check that blocks (a chDB query) while tasks on this
    event loop must keep running. `detail()`, when given, is appended to the timeout's message.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = await asyncio.to_thread(ready) if off_loop else ready()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}{extra}"[:4000])
        await asyncio.sleep(poll_s)


# --- Kafka ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TopicRecord:
    """One record a `TopicReader` received; `arrived_ms` is the wall clock when its fetch returned."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    arrived_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0  # the record's own timestamp (CreateTime: when its producer appended it)

    def json(self) -> Any:
        return orjson.loads(self.value)


class TopicReader:
    """Reads topics from the beginning in a background task; never joins a consumer group, commits nothing.

    Contract:
    - `start()` (or `async with`) starts the consumer and returns once the reading task runs; records written
      before or after that are all read, from offset 0 of every partition (topics that do not exist yet are
      picked up within `metadata_max_age_ms` of being created).
    - Each record is passed to `on_record` (in the reader's task, in offset order per partition), then kept in
      `records` unless `keep=False`. `ends[(topic, partition)]` is the offset after the last record read.
    - `stop()` ends the task and closes the consumer. An exception raised by `on_record` ends the reading and
      is raised again by `stop()`.
    - Nothing blocks the caller's event loop but the fetch itself: `poll_ms` bounds each fetch, and
      `fetch_max_wait_ms` how long the broker holds one when there is no data (lower: less latency, more
      requests while idle).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        *,
        on_record: Callable[[TopicRecord], None] | None = None,
        keep: bool = True,
        poll_ms: int = 200,
        max_records: int | None = None,
        metadata_max_age_ms: int = 500,
        fetch_max_wait_ms: int = 500,
    ) -> None:
        self.topics = list(topics)
        self.records: list[TopicRecord] = []
        self.ends: dict[tuple[str, int], int] = {}
        self.on_record = on_record
        self.keep = keep
        self.poll_ms = poll_ms
        self.max_records = max_records
        self._docs: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, metadata_max_age_ms=metadata_max_age_ms, fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *names: str, **options: Any) -> TopicReader:
        """A reader of the topics `names` (e.g. "actions") under the settings' topic prefix."""
        return cls(settings.bootstrap_servers, [settings.topic(name) for name in names], **options)

    async def start(self) -> TopicReader:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"topic-reader {','.join(self.topics)}")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await self._consumer.stop()

    async def __aenter__(self) -> TopicReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
            now_ms = int(time.time() * 1000)
            for tp, messages in batches.items():
                for message in messages:
                    self._take(tp.topic, tp.partition, message, now_ms)

    def _take(self, topic: str, partition: int, message: ConsumerRecord[bytes, bytes], now_ms: int) -> None:
        record = TopicRecord(
            topic, partition, message.offset, message.key, message.value or b"", now_ms, tuple(message.headers),
            message.timestamp,
        )
        self.ends[(topic, partition)] = message.offset + 1
        if self.on_record is not None:
            self.on_record(record)
        if self.keep:
            self.records.append(record)

    # --- reading what arrived ---------------------------------------------------------------------------------
    def of(self, topic_suffix: str) -> list[TopicRecord]:
        """The records of the topic(s) whose name ends with `topic_suffix` (e.g. "actions")."""
        return [r for r in self.records if r.topic.endswith(topic_suffix)]

    def docs(self) -> list[Any]:
        """Every kept record's value decoded as JSON, in arrival order (decoded once, as they arrive)."""
        for record in self.records[len(self._docs) :]:
            self._docs.append(record.json())
        return self._docs

    def where(self, **match: Any) -> list[Any]:
        """The JSON documents whose fields equal every `match` (e.g. `where(outcome="sent")`)."""
        return [d for d in self.docs() if all(d.get(k) == v for k, v in match.items())]

    async def wait_for(self, ready: Callable[[], object], timeout_s: float = 15.0, what: str = "records") -> None:
        """`wait_until(ready)`; the timeout's message lists what was read."""
        await wait_until(ready, timeout_s, what, detail=lambda: f"got {self.records!r}")


class CommittedOffsets:
    """Reads the committed offsets of consumer group `group` without joining it (so it never causes a rebalance).

    A plain consumer with the group's id answers OffsetFetch; Tansu drops the admin client's OffsetFetch
    connection, so this is the way that works on the dev broker and on Kafka alike. Use as `async with`.
    """

    def __init__(self, bootstrap: str, group: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    async def __aenter__(self) -> CommittedOffsets:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def of(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Committed offset per (topic, partition); 0 where the group committed nothing yet."""
        return {
            (topic, p): await self._consumer.committed(TopicPartition(topic, p)) or 0 for topic, p in partitions
        }


# --- child processes ------------------------------------------------------------------------------------------
class ChildFailed(RuntimeError):
    """A child process exited early or did not become ready; the message holds the tail of its log."""


def nudge_command() -> list[str]:
    """The `nudge` console script next to this interpreter, else `python -m engine`."""
    script = Path(sys.executable).with_name("nudge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


class ChildProcess:
    """One sub-process with its own log file, run in its own session.

    Contract:
    - `start()` spawns `argv` with `env` (the complete environment; None: this process's), stdout and stderr
      appended to `log_path`, stdin from /dev/null, in a new session: a Ctrl-C in the terminal reaches only the
      parent (which then stops its children in its own order), and signals from `stop()`/`kill()` reach only
      this process and what it started. A stopped child can be started again (same log, appended).
    - `log_text()` is what it logged since its last start; waits raise `ChildFailed` with the log's tail when
      the child exits first or the time runs out. `check_alive()` raises the same for a child that has exited.
    - `cpu_s()` is its user+system CPU seconds so far, `rss_bytes()` its resident set size (both from /proc;
      None once it has exited).
    - `stop(grace_s)` sends SIGTERM, waits up to `grace_s`, then SIGKILLs; it never leaves the process behind
      and is a no-op for a child that is not running. Also a context manager (`with child.start(): ...`).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        log_path: Path,
        *,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @classmethod
    def nudge(
        cls, name: str, args: Sequence[str], env: Mapping[str, str] | None, log_path: Path, **options: Any
    ) -> ChildProcess:
        """`nudge <args>` (see `nudge_command`)."""
        return cls(name, [*nudge_command(), *args], env, log_path, **options)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ChildFailed(f"{self.name} was not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")
        return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ChildFailed(
                f"{self.name} exited with code {self.proc.returncode}; log {self.log_path}:\n{self.log_tail()}"
            )

    async def wait_until(self, ready: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
        """Until `ready()` (or the awaitable it returns) is truthy; `ChildFailed` if the child exits first or
        `timeout_s` passes."""

        async def check() -> bool:
            result = ready()
            if inspect.isawaitable(result):
                result = await result
            if result:  # a child that did its part and then exited still did it
                return True
            self.check_alive()
            return False

        try:
            await wait_until(check, timeout_s, what, poll_s=poll_s)
        except TimeoutError:
            raise ChildFailed(
                f"{self.name} not ready after {timeout_s:.0f} s (no {what}); log {self.log_path}:\n{self.log_tail()}"
            ) from None

    async def wait_for_log(self, text: str, timeout_s: float, count: int = 1, poll_s: float = 0.1) -> None:
        """Until `text` appears `count` times in what it logged since its start."""
        await self.wait_until(lambda: self.log_text().count(text) >= count, timeout_s, repr(text), poll_s)

    def cpu_s(self) -> float | None:
        with contextlib.suppress(OSError, IndexError, ValueError, ChildFailed):
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        return None

    def rss_bytes(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, ChildFailed):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None

    def signal(self, signum: int) -> None:
        """Send `signum` to the child's session (a no-op once it has exited)."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def wait(self, timeout_s: float) -> int:
        """Its exit code, waiting up to `timeout_s` (`subprocess.TimeoutExpired` after that)."""
        if self.proc is None:
            raise ChildFailed(f"{self.name} was not started")
        return self.proc.wait(timeout_s)

    def kill(self) -> int | None:
        """SIGKILL now (no clean shutdown: a crash) and reap it; its exit code."""
        self.signal(signal.SIGKILL)
        return None if self.proc is None else self.proc.wait()

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, up to `grace_s` to exit, then SIGKILL; its exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self.proc.returncode


# --- HTTP -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerRequest:
    """One request a `RecordingPeer` received; `at` is the wall clock (time.time()) of its arrival."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


Answer = tuple[int, dict[str, str], str]  # status, headers, body text
Responder = Callable[[web.Request, PeerRequest], web.StreamResponse | Answer | Awaitable[web.StreamResponse]]


@dataclass
class RecordingPeer:
    """An HTTP server on 127.0.0.1 (a free port) that records every request and answers as it is told.

    Contract:
    - Every request, whatever its method and path, is appended to `requests` and sets `arrived`, before it is
      answered. While `hold` is an Event that is not set, requests then wait for it (a hung peer); `stop()`
      sets it, so nothing stays held.
    - The answer is `respond(request, recorded)` when given (an `Answer` tuple or an aiohttp response, or an
      awaitable of one), else the next entry of `script` (consumed), else `default`. Its status is appended
      to `statuses`, in the order answers are given.
    - `start()` (or `async with`) binds and returns once it accepts connections; `url` is its base URL.
      `serve_in_thread()` runs it on a private event loop in a daemon thread, for synchronous tests whose
      code under test calls it from another process.
    """

    script: list[Answer] = field(default_factory=list)
    default: Answer = (200, {}, "ok")
    respond: Responder | None = None
    hold: asyncio.Event | None = None
    requests: list[PeerRequest] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ids(self, header: str = "X-Nudge-Action-Id") -> list[str]:
        """The value of `header` in every request (the action ids a deduping peer would count)."""
        return [r.headers.get(header, "") for r in self.requests]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        recorded = PeerRequest(
            request.method, request.path, dict(request.query), dict(request.headers), await request.read(), time.time()
        )
        self.requests.append(recorded)
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        answer: web.StreamResponse | Answer | Awaitable[web.StreamResponse]
        if self.respond is not None:
            answer = self.respond(request, recorded)
            if inspect.isawaitable(answer):
                answer = await answer
        else:
            answer = self.script.pop(0) if self.script else self.default
        if isinstance(answer, tuple):
            status, headers, text = answer
            answer = web.Response(status=status, headers=headers, text=text)
        assert isinstance(answer, web.StreamResponse)
        self.statuses.append(answer.status)
        return answer

    async def start(self) -> RecordingPeer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> RecordingPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def serve_in_thread(self, timeout_s: float = 30.0) -> Iterator[RecordingPeer]:
        """Run the peer on its own event loop in a daemon thread while the `with` block runs."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="recording-peer", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout_s)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout_s)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            loop.close()
