"""The worker creates its co-partitioned inputs itself and refuses to start on a broken layout."""

from __future__ import annotations

import asyncio

import pytest

from engine.commands.worker import prepare_topics
from engine.config import Settings
from engine.kafka.admin import ensure_topics

pytestmark = pytest.mark.integration


def test_worker_creates_clickstream_and_identity_handovers_with_the_configured_partitions(settings: Settings) -> None:
    wide = settings.with_(partitions=8)
    assert prepare_topics(wide) is None
    counts = asyncio.run(ensure_topics(wide, ("clickstream", "identity-handovers")))
    assert set(counts.values()) == {8}, counts


def test_worker_refuses_identity_handovers_with_fewer_partitions_than_clickstream(settings: Settings) -> None:
    # What a broker's auto-creation does: `identity-handovers` with its default count, `clickstream` with ours.
    asyncio.run(ensure_topics(settings.with_(partitions=8), ("clickstream",)))
    asyncio.run(ensure_topics(settings.with_(partitions=2), ("identity-handovers",)))
    problem = prepare_topics(settings.with_(partitions=8))
    assert problem is not None
    assert "same number of partitions" in problem
    assert f"{settings.topic('identity-handovers')}: 2" in problem
