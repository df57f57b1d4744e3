"""`OutputBatch` (engine/worker/faust_ext/batched_output.py) on the real broker: a flush started in the background
takes what was queued at that moment, flushes never overlap, and each one's callback runs after its records
were acknowledged, in the order the flushes were started."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaProducer

from engine.config import Settings
from engine.kafka.admin import ensure_topics
from engine.testing import TopicReader
from engine.worker.faust_ext import batched_output
from engine.worker.faust_ext.batched_output import OutputBatch

pytestmark = pytest.mark.integration


class FaustProducerShim:
    """What `OutputBatch` uses of Faust's producer: the aiokafka producer behind it."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self.producer


async def test_background_flushes_go_out_one_after_another_and_confirm_in_order(settings: Settings) -> None:
    await ensure_topics(settings, ["actions", "changelog"])
    actions, changelog = settings.topic("actions"), settings.topic("changelog")
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    confirmed: list[str] = []
    try:
        output = OutputBatch(FaustProducerShim(producer))
        output.send_last(changelog)
        output.send(actions, b"lead", b"action-1", partition=0)
        output.send(changelog, b"lead", b"state-1", partition=0)
        first = output.flush_in_background(lambda: confirmed.append("first"))
        # Queued after the first flush started: they belong to the second one.
        output.send(actions, b"lead", b"action-2", partition=0)
        output.send(changelog, b"lead", b"state-2", partition=0)
        second = output.flush_in_background(lambda: confirmed.append("second"))
        assert confirmed == []
        await second
        assert first.done() and confirmed == ["first", "second"]
        await output.flush()  # nothing queued, nothing on its way: returns at once
    finally:
        await producer.stop()
    async with TopicReader(settings.bootstrap_servers, [actions, changelog]) as reader:
        await reader.wait_for(lambda: len(reader.records) == 4, what="the four records")
    by_topic = {t: [(r.offset, r.value) for r in reader.records if r.topic == t] for t in (actions, changelog)}
    assert by_topic[actions] == [(0, b"action-1"), (1, b"action-2")]
    assert by_topic[changelog] == [(0, b"state-1"), (1, b"state-2")], "a key's states land in the order written"


async def test_an_acknowledgement_held_back_is_logged_until_it_comes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(batched_output, "SLOW_ACK_WARNING_S", 0.05)
    loop = asyncio.get_running_loop()
    held: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.2, held.set_result, "acked")
    quick: asyncio.Future[str] = loop.create_future()
    quick.set_result("acked")
    with caplog.at_level(logging.WARNING, logger=batched_output.__name__):
        results = await batched_output.acknowledged([quick, held], [("actions", 0), ("changelog", 3)])
    assert results == ["acked", "acked"]
    warnings = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert warnings and "1 of 2 produce batches pending" in warnings[0] and "('changelog', 3)" in warnings[0]
