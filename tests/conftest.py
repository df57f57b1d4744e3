"""Shared fixtures. Services are real: the dev stack (Tansu broker + Redis) is started once per test session.

- `stack`: the running dev stack (`engine.devstack.StackInfo`), started under a temporary directory and stopped at the
  end of the session.
- `settings`: `Settings` pointing at the stack, with a unique topic prefix and app id per test so tests sharing the
  broker never see each other's topics, and a private chDB path.
- `redis_url`: a Redis database on the stack's server, flushed before the test.
- `http_peer`: an `engine.testing.RecordingPeer` on loopback answering 200; `smtp_inbox`: a plain SMTP server on
  loopback keeping every message (`.port`, `.messages`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

from engine.config import Settings
from engine.devstack import DevStack, StackInfo
from engine.testing import RecordingPeer

if TYPE_CHECKING:
    from tests.connectors.smtp_peer import SmtpPeer

_counter = itertools.count()

# CI (CI=true) runs the property tests on a fixed seed with no example database: the same examples every run,
# so a red CI is a regression, not luck. Locally they explore new examples each run and remember failures.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    dev = DevStack(tmp_path_factory.mktemp("devstack"))
    info = dev.up()
    try:
        yield info
    finally:
        dev.down()


@pytest.fixture
def redis_url(stack: StackInfo) -> str:
    import redis

    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    client.close()
    return stack.redis_url


@pytest.fixture
def settings(stack: StackInfo, tmp_path: Path, redis_url: str) -> Settings:
    n = next(_counter)
    prefix = f"t{os.getpid()}-{n}-"
    return Settings(
        broker_url=stack.broker_url,
        broker_profile="dev",
        redis_url=redis_url,
        clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}",
        rules_path=Path(__file__).resolve().parent.parent / "rules",
        state_dir=tmp_path / "state",
        app_id=f"nudge-{prefix}",
        topic_prefix=prefix,
        partitions=4,
    )


@pytest.fixture
async def http_peer() -> AsyncIterator[RecordingPeer]:
    async with RecordingPeer() as peer:
        yield peer


@pytest.fixture
def smtp_inbox() -> Iterator[SmtpPeer]:
    from tests.connectors.smtp_peer import SmtpPeer  # aiosmtpd and cryptography: only for the tests that mail

    inbox = SmtpPeer().start_plain()
    try:
        yield inbox
    finally:
        inbox.stop()
