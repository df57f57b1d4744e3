"""The crash test in the suite (tests/integration/crash.py): kill -9 the worker three times during a live stream of
2,000 leads; what the webhook peer received through a real dispatcher equals `nudge simulate` on the exact
records produced: 0 lost, 0 extra, 0 doubled."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Settings
from tests.integration.crash import run_crash

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_three_worker_kills_lose_invent_and_double_nothing(settings: Settings, tmp_path: Path) -> None:
    result = await run_crash(settings, tmp_path, leads=2000, seconds=30.0, kills=3, seed=11)
    assert len(result.kills) == 3
    assert len(result.expected) > 800, result.summary()
    assert not result.lost and not result.extra and not result.doubled, result.summary()
    print(result.summary())
