"""Fixtures for the collector tests: a real collector on loopback (in its own thread, so the synchronous SDKs
can call it from the test), and a reader of the real clickstream topic (`engine.testing.TopicReader`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from engine.collector.app import create_app
from engine.config import Settings
from engine.kafka.topics import CLICKSTREAM
from engine.testing import TopicReader, wait_until

WRITE_KEY = "wk-test-1"  # a browser (client) write key
SERVER_KEY = "sk-test-server-1"  # a server write key
USER_HASH_SECRET = "test-user-hash-secret-0123456789abcdef"  # NUDGE_USER_HASH_SECRET


class ServerThread:
    """Runs one aiohttp application on 127.0.0.1 in a private event loop thread; `url` once started."""

    def __init__(self, factory: Callable[[], web.Application | Awaitable[web.Application]]) -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    async def _start(self) -> str:
        app = self._factory()
        if not isinstance(app, web.Application):
            app = await app
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def start(self) -> ServerThread:
        self._thread.start()
        self.url = self.call(self._start())
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def collector_settings(settings: Settings) -> Settings:
    """Two browser keys, a server key, a user-hash secret; rate limits off (tests send fast from one address:
    tests/collector/test_public_edge.py tests the limits on their own)."""
    return settings.with_(
        write_keys=(WRITE_KEY, "wk-other"),
        server_write_keys=(SERVER_KEY,),
        user_hash_secret=USER_HASH_SECRET,
        rate_limit_key_events_per_s=0.0,
        rate_limit_ip_events_per_s=0.0,
    )


@pytest.fixture
def collector(collector_settings: Settings) -> Iterator[ServerThread]:
    server = ServerThread(lambda: create_app(collector_settings)).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Record:
    key: str
    value: dict[str, Any]
    partition: int


async def read_clickstream_records(settings: Settings, expect: int, timeout_s: float, settle_s: float) -> list[Record]:
    """Every record of the clickstream topic once `expect` arrived and `settle_s` passed without more being
    needed (so extra, duplicate records would be seen too); what arrived by `timeout_s` otherwise."""
    async with TopicReader.from_settings(settings, CLICKSTREAM) as reader:
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: len(reader.records) >= expect, timeout_s, f"{expect} clickstream records")
            await asyncio.sleep(settle_s)
    return [Record(r.key.decode() if r.key else "", r.json(), r.partition) for r in reader.records]


@pytest.fixture
def read_clickstream(collector_settings: Settings) -> Callable[..., list[Record]]:
    """`read_clickstream(expect)`: every record of the test's clickstream topic once `expect` are there."""

    def read(expect: int, timeout_s: float = 15.0, settle_s: float = 0.3) -> list[Record]:
        return asyncio.run(read_clickstream_records(collector_settings, expect, timeout_s, settle_s))

    return read
