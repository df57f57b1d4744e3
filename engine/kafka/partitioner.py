"""Kafka's default partitioner, for records this process places itself (batched output, hand-overs, the bench's
load generator): the same partition aiokafka's and the Java client's producers pick for a key."""

from __future__ import annotations

import struct


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), unsigned 32-bit. aiokafka's version reads
    byte by byte; this one reads 4-byte words at once, ~3x faster on the worker's hand-over path."""
    m = 0x5BD1E995
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = words * 4
    extra = length - tail
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def default_partition(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as aiokafka and the Java client) gives `key`: where
    clickstream producers put the lead's events, and so where its state lives."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
