"""The shipped harness (engine/testing.py) on its own: child processes, the recording peer, bounded waits.

`TopicReader` and `CommittedOffsets` need a broker: the integration, dispatcher and ClickHouse tests use them.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.testing import ChildFailed, ChildProcess, PeerRequest, RecordingPeer, wait_until

SCRIPT = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("stopping", flush=True), sys.exit(3)))
print("ready", flush=True)
sum(range(3_000_000))  # some CPU time to measure
time.sleep(60)
"""


def child(tmp_path: Path, script: str = SCRIPT) -> ChildProcess:
    return ChildProcess("pychild", [sys.executable, "-c", script], None, tmp_path / "child.log")


async def test_child_waits_for_its_log_measures_cpu_and_stops_with_sigterm(tmp_path: Path) -> None:
    with child(tmp_path).start() as proc:
        await proc.wait_for_log("ready", timeout_s=10)
        await proc.wait_until(lambda: (proc.cpu_s() or 0) > 0, timeout_s=10, what="CPU time")
        assert proc.alive() and (proc.rss_bytes() or 0) > 0
        assert proc.stop(grace_s=10) == 3  # its SIGTERM handler ran
    assert "stopping" in proc.log_text() and proc.cpu_s() is None


async def test_a_restarted_child_logs_from_its_new_start_and_kill_is_a_crash(tmp_path: Path) -> None:
    proc = child(tmp_path).start()
    await proc.wait_for_log("ready", timeout_s=10)
    assert proc.kill() == -9
    proc.start()
    await proc.wait_for_log("ready", timeout_s=10)
    assert proc.log_text().count("ready") == 1  # the first run's lines stay in the file, not in log_text()
    assert (tmp_path / "child.log").read_text().count("ready") == 2
    proc.stop(grace_s=10)


async def test_a_child_that_dies_or_stays_silent_fails_with_its_log(tmp_path: Path) -> None:
    dying = child(tmp_path, "print('boom'); raise SystemExit(7)")
    with dying.start(), pytest.raises(ChildFailed, match=r"(?s)pychild exited with code 7.*boom"):
        await dying.wait_for_log("never", timeout_s=10)
    with child(tmp_path).start() as proc, pytest.raises(ChildFailed, match="not ready after"):
        await proc.wait_for_log("never", timeout_s=0.3)


async def test_wait_until_takes_async_checks_and_names_what_it_waited_for() -> None:
    ticks = []

    async def third_time() -> bool:
        ticks.append(1)
        return len(ticks) >= 3

    await wait_until(third_time, timeout_s=5, poll_s=0.01)
    with pytest.raises(TimeoutError, match="waiting for the moon; saw nothing"):
        await wait_until(lambda: False, timeout_s=0.05, what="the moon", detail=lambda: "saw nothing")


async def test_peer_records_and_answers_from_its_script_then_its_default() -> None:
    async with RecordingPeer(script=[(503, {"Retry-After": "1"}, "busy")], default=(201, {}, "made")) as peer:
        statuses = [await asyncio.to_thread(_post, f"{peer.url}/hook?x=1", b'{"a": 1}') for _ in range(2)]
    assert statuses == [503, 201] == peer.statuses
    first = peer.requests[0]
    assert (first.method, first.path, first.query, first.json()) == ("POST", "/hook", {"x": "1"}, {"a": 1})


async def test_peer_holds_requests_and_answers_through_respond() -> None:
    def teapot(_request: object, recorded: PeerRequest) -> tuple[int, dict[str, str], str]:
        return 418, {}, recorded.path

    peer = await RecordingPeer(respond=teapot, hold=asyncio.Event()).start()
    try:
        pending = asyncio.create_task(asyncio.to_thread(_post, f"{peer.url}/tea", b""))
        await asyncio.wait_for(peer.arrived.wait(), 5)
        assert not pending.done() and peer.statuses == []
        assert peer.hold is not None
        peer.hold.set()
        assert await pending == 418
    finally:
        await peer.stop()


def test_peer_in_a_thread_serves_synchronous_code() -> None:
    with RecordingPeer().serve_in_thread() as peer:
        assert _post(f"{peer.url}/sync", b"x") == 200
    assert [r.path for r in peer.requests] == ["/sync"]


def _post(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
