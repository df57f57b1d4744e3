"""Topic administration shared by every process that must find its topics in place before it starts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from engine.config import Settings
from engine.kafka.security import client_options


class TopicLayoutError(RuntimeError):
    """Topics that must be co-partitioned have different partition counts."""


def bootstrap_servers(settings: Settings) -> str:
    """The `host:port[,...]` list aiokafka takes (`Settings.bootstrap_servers`)."""
    return settings.bootstrap_servers


async def ensure_topics(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """Create each missing topic (names without the prefix) with `settings.partitions` partitions and return
    {full name: partition count} of every named topic as the broker reports it.

    Replication factor 1 (the dev broker; a real cluster's operators pre-create topics with their own
    replication). Tolerates another process creating a topic meanwhile; never changes an existing topic.
    Raises the admin client's errors when the broker is unreachable or refuses."""
    full_names = [settings.topic(name) for name in names]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings), **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in full_names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created one meanwhile
                await admin.create_topics(
                    [NewTopic(name, num_partitions=settings.partitions, replication_factor=1) for name in missing]
                )
        described = await admin.describe_topics(full_names)
    finally:
        await admin.close()
    return {topic["topic"]: len(topic["partitions"]) for topic in described}


def check_copartitioned(counts: dict[str, int]) -> None:
    """Raise `TopicLayoutError` unless every topic in `counts` has the same number of partitions."""
    if len(set(counts.values())) > 1:
        layout = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        raise TopicLayoutError(
            f"these topics must have the same number of partitions, but have {layout}; a lead's events, "
            "identity hand-overs and state must share a partition. Recreate the smaller topic with the same count "
            "(or set NUDGE_PARTITIONS to the existing count before the first start)"
        )
