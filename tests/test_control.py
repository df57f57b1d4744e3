"""Worker control records (engine/control.py): round trips, the first tick format, and rejects."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.control import (
    BadControl,
    Handover,
    MergeIn,
    default_partition,
    handover_record,
    merge_record,
    murmur2,
    parse_control,
    tick_record,
)
from engine.core.model import Tick


def test_round_trips() -> None:
    assert parse_control(tick_record("a", 2_000, 1_500)) == ("a", Tick(2_000), 1_500)
    assert parse_control(handover_record("anon", "known")) == ("anon", Handover("known"), None)
    state = orjson.dumps({"id": "anon", "f": {"ct": {"sku-1": [1, 25.0]}}})
    lead, merge, deadline = parse_control(merge_record("known", "anon", state))
    assert (lead, deadline) == ("known", None)
    assert isinstance(merge, MergeIn) and merge.from_lead == "anon"
    assert orjson.loads(merge.state) == orjson.loads(state)


def test_a_record_without_op_is_a_tick() -> None:
    raw = orjson.dumps({"lead_id": "a", "now_ms": 5, "deadline_ms": 4})
    assert parse_control(raw) == ("a", Tick(5), 4)


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[]", b'{"op": "tick", "lead_id": "a"}', b'{"op": "explode", "lead_id": "a"}'],
)
def test_anything_else_is_rejected(raw: bytes | None) -> None:
    with pytest.raises(BadControl):
        parse_control(raw)


@given(st.binary(max_size=80), st.integers(min_value=1, max_value=64))
def test_default_partition_agrees_with_aiokafkas_partitioner(key: bytes, partitions: int) -> None:
    from aiokafka.partitioner import DefaultPartitioner
    from aiokafka.partitioner import murmur2 as reference

    assert murmur2(key) & 0x7FFFFFFF == reference(key) & 0x7FFFFFFF
    text = key.decode("utf-8", errors="replace")
    expected = DefaultPartitioner()(text.encode(), list(range(partitions)), None)
    assert default_partition(text, partitions) == expected
