"""Acceptance: anonymous cart → identify → the abandonment nudge goes to the identified email, through the
real collector (driven by the Segment SDK) and a real `nudge worker` subprocess."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from segment.analytics import Client as SegmentClient

from engine.collector.app import create_app
from engine.config import Settings
from engine.testing import TopicReader
from tests.integration.worker_process import WorkerProcess, cart_abandoned, with_rules

from .conftest import WRITE_KEY, ServerThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = "rules:\n" + cart_abandoned("{connector: email, template: cart_reminder}")


@pytest.fixture
def e2e_settings(settings: Settings, tmp_path: Path) -> Settings:
    return with_rules(settings, tmp_path, RULES, write_keys=(WRITE_KEY,))


@pytest.fixture
def worker(e2e_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(e2e_settings, tmp_path / "worker.log") as process:
        yield process


def actions(reader: TopicReader, lead: str) -> list[dict]:
    return [a for a in (r.json() for r in reader.of("actions")) if a["lead_id"] == lead]


async def test_anonymous_cart_then_identify_nudges_the_identified_email(
    e2e_settings: Settings, worker: WorkerProcess
) -> None:
    await worker.start_ready()
    server = ServerThread(lambda: create_app(e2e_settings)).start()
    try:
        async with TopicReader.from_settings(e2e_settings, "actions") as reader:
            client = SegmentClient(WRITE_KEY, host=server.url, sync_mode=True)
            client.track(
                anonymous_id="anon-e2e",
                event="Product Added",
                properties={"sku": "sku-1", "price": 25, "quantity": 1},
            )
            # minutes later in real life: a separate request, so the cart is already in the anonymous lead
            client.identify("user-e2e", {"email": "zoe@example.com", "name": "Zoe"}, anonymous_id="anon-e2e")
            # whichever lead the cart ends up in, its deadline fires ~2.5 s after the event
            await reader.wait_for(
                lambda: actions(reader, "user-e2e") or actions(reader, "anon-e2e"),
                timeout_s=30,
                what="the abandonment nudge",
            )
            done = time.time()
            await reader.wait_for(lambda: time.time() - done > 1.0, timeout_s=5, what="drain")
    finally:
        server.stop()
    (nudge,) = actions(reader, "user-e2e")
    assert nudge["rule"] == "cart_abandoned" and nudge["connector"] == "email"
    assert nudge["context"]["traits"]["email"] == "zoe@example.com"
    assert actions(reader, "anon-e2e") == [], "the anonymous lead's cart moved to the known lead"
