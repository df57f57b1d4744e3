"""Identity hand-over records (engine/worker/handovers.py): round trips and rejects."""

from __future__ import annotations

import orjson
import pytest

from engine.worker.handovers import (
    BadHandoverRecord,
    Handover,
    MergeIn,
    handover_record,
    merge_record,
    parse_handover_record,
)


def test_round_trips() -> None:
    assert parse_handover_record(handover_record("anon", "known")) == ("anon", Handover("known"))
    state = orjson.dumps({"id": "anon", "f": {"ct": {"sku-1": [1, 25.0]}}})
    lead, merge = parse_handover_record(merge_record("known", "anon", state))
    assert lead == "known"
    assert isinstance(merge, MergeIn) and merge.from_lead == "anon"
    assert orjson.loads(merge.state) == orjson.loads(state)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"lead_id": "a", "now_ms": 5}',
        b'{"op": "tick", "lead_id": "a", "now_ms": 5, "deadline_ms": 4}',
        b'{"op": "explode", "lead_id": "a"}',
    ],
)
def test_anything_else_is_rejected(raw: bytes | None) -> None:
    with pytest.raises(BadHandoverRecord):
        parse_handover_record(raw)
