"""Kafka connector against the dev broker, Redis stream connector against the real Redis."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio import Redis

from connectors.base import ConnectorEnv
from connectors.kafka import KafkaConfig, KafkaConnector
from connectors.redis_stream import RedisStreamConfig, RedisStreamConnector
from connectors.rendering import Renderer
from engine.config import Settings
from engine.core.model import Action
from engine.testing import TopicReader
from tests.connectors.helpers import make_action

pytestmark = pytest.mark.integration


async def test_kafka_connector_produces_the_action(settings: Settings) -> None:
    topic = settings.topic("downstream")
    connector = KafkaConnector(
        "kafka", KafkaConfig(type="kafka", topic=topic), ConnectorEnv(settings, Renderer())
    )
    action = make_action("kafka")
    await connector.start()
    try:
        await connector.send(action)
    finally:
        await connector.close()
    async with TopicReader(settings.bootstrap_servers, [topic]) as reader:
        await reader.wait_for(lambda: reader.records, what="the action on the downstream topic")
    [record] = reader.records
    assert record.key == action.lead_id.encode()
    assert Action.from_json(record.value) == action
    assert dict(record.headers)["action_id"] == action.action_id.encode()
    assert dict(record.headers)["rule"] == action.rule.encode()


async def test_redis_connector_xadds_to_the_stream(settings: Settings) -> None:
    config = RedisStreamConfig(type="redis", stream="test:actions", maxlen=1000)
    connector = RedisStreamConnector("redis", config, ConnectorEnv(settings, Renderer()))
    actions = [make_action("redis", payload={"n": n}) for n in range(3)]
    await connector.start()
    try:
        for action in actions:
            await connector.send(action)
    finally:
        await connector.close()
    redis = Redis.from_url(settings.redis_url)
    try:
        entries = await redis.xrange("test:actions")
    finally:
        await redis.aclose()
    assert [e[1][b"action_id"].decode() for e in entries] == [a.action_id for a in actions]
    fields = entries[2][1]
    assert orjson.loads(fields[b"payload"]) == {"n": 2}
    assert Action.from_json(fields[b"action"]) == actions[2]
    assert fields[b"lead_id"].decode() == actions[2].lead_id
