"""Broker or Redis down: 503 with Retry-After, nothing lost, and the retry after recovery is produced once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from engine.collector.app import create_app
from engine.config import Settings
from engine.devstack import free_port, tansu_binary, wait_for_port
from engine.kafka.admin import ensure_topics
from engine.kafka.topics import CLICKSTREAM
from engine.testing import ChildProcess

from .conftest import ServerThread, read_clickstream_records
from .test_bad_input import auth, post, track

pytestmark = pytest.mark.integration


class Broker:
    """A private Tansu broker on a fixed port that the test can kill and start again (memory storage)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [
            tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--cluster-id", "collector-outage",
        ]
        self.process = ChildProcess("tansu", argv, None, log_path)

    def start(self) -> None:
        self.process.start()
        assert wait_for_port(self.port), self.process.log_tail()

    def stop(self) -> None:
        self.process.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "tansu.log")
    try:
        yield b
    finally:
        b.stop()


def post_until_accepted(url: str, body: dict, timeout_s: float = 20) -> list[int]:
    """Re-send like an SDK does after a 503; returns the statuses seen, ending with 200."""
    statuses: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = post(url, "/v1/batch", body, auth())
        statuses.append(response.status_code)
        if response.status_code == 200:
            return statuses
        assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
        time.sleep(0.2)
    raise AssertionError(f"not accepted within {timeout_s} s: {statuses}")


def test_broker_down_gives_503_and_the_retry_is_produced_once(collector_settings: Settings, broker) -> None:
    settings = collector_settings.with_(broker_url=f"kafka://127.0.0.1:{broker.port}")
    server = ServerThread(lambda: create_app(settings, produce_timeout_ms=1500)).start()
    try:
        first = {"batch": [track("o-1"), track("o-2")]}
        response = post(server.url, "/v1/batch", first, auth())
        assert response.status_code == 503 and response.json()["code"] == "broker_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        health = requests.get(server.url + "/healthz")
        assert health.status_code == 503 and health.json()["broker"] == "unreachable"

        broker.start()
        assert post_until_accepted(server.url, first)[-1] == 200
        records = _run_read(settings, 2)
        assert sorted(r.value["messageId"] for r in records) == ["o-1", "o-2"]

        broker.stop()  # now a running producer loses its broker
        second = {"batch": [track("o-3")]}
        response = post(server.url, "/v1/batch", second, auth())
        assert response.status_code == 503 and response.json()["code"] == "broker_unavailable"
        broker.start()
        # Tansu keeps topics in memory only; recreate ours as a persistent broker would still have it. (Tansu
        # acks produce requests for a topic it does not know and drops them, so this is needed.)
        asyncio.run(ensure_topics(settings, [CLICKSTREAM]))
        post_until_accepted(server.url, second)
        assert post(server.url, "/v1/batch", second, auth()).status_code == 200  # a late duplicate
        records = _run_read(settings, 1)
        assert [r.value["messageId"] for r in records] == ["o-3"]
    finally:
        server.stop()


def test_overload_is_shed_with_503(collector_settings: Settings) -> None:
    server = ServerThread(lambda: create_app(collector_settings, max_inflight=0)).start()
    try:
        response = post(server.url, "/v1/batch", {"batch": [track("x-1")]}, auth())
        assert response.status_code == 503 and response.json()["code"] == "overloaded"
        assert response.headers["Retry-After"] == "1"
    finally:
        server.stop()


def test_redis_down_gives_503(collector_settings: Settings) -> None:
    settings = collector_settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    server = ServerThread(lambda: create_app(settings)).start()
    try:
        response = post(server.url, "/v1/batch", {"batch": [track("r-1")]}, auth())
        assert response.status_code == 503 and response.json()["code"] == "redis_unavailable"
        assert response.headers["Retry-After"].isdigit()
        assert requests.get(server.url + "/healthz").json()["redis"] == "unreachable"
    finally:
        server.stop()


def _run_read(settings: Settings, expect: int):
    return asyncio.run(read_clickstream_records(settings, expect, timeout_s=15, settle_s=0.5))
