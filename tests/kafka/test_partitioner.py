"""The murmur2 partitioner (engine/kafka/partitioner.py) agrees with aiokafka's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.kafka.partitioner import default_partition, murmur2


@given(st.binary(max_size=80), st.integers(min_value=1, max_value=64))
def test_default_partition_agrees_with_aiokafkas_partitioner(key: bytes, partitions: int) -> None:
    from aiokafka.partitioner import DefaultPartitioner
    from aiokafka.partitioner import murmur2 as reference

    assert murmur2(key) & 0x7FFFFFFF == reference(key) & 0x7FFFFFFF
    text = key.decode("utf-8", errors="replace")
    expected = DefaultPartitioner()(text.encode(), list(range(partitions)), None)
    assert default_partition(text, partitions) == expected
