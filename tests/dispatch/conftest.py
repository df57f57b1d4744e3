"""Fixtures of the dispatcher tests: `rig`, a started `DispatchRig` (tests/dispatch/rig.py), closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.config import Settings
from tests.dispatch.rig import DispatchRig


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[DispatchRig]:
    started = await DispatchRig(settings).start()
    try:
        yield started
    finally:
        await started.close()
