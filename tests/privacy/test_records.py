"""The privacy pipeline's records (engine/privacy/records.py): round trips, refusals, the keyed hash."""

from __future__ import annotations

import pytest

from engine.privacy.records import (
    ERASE,
    BadPrivacyRecord,
    DeleteOrder,
    Receipt,
    WorkerRequest,
    parse_control,
    subject_hash,
    worker_op,
)


def test_worker_requests_round_trip_and_refuse_what_is_not_theirs() -> None:
    request = WorkerRequest(ERASE, "user-1", "req_1", 2, suppress=True)
    assert WorkerRequest.parse(request.to_bytes()) == request
    for raw in (b"", b"[]", b'{"op": "explode", "lead_id": "a", "request_id": "r", "index": 0}',
                b'{"op": "erase", "lead_id": "", "request_id": "r", "index": 0}',
                b'{"op": "erase", "lead_id": "a", "request_id": "r", "index": true}'):  # fmt: skip
        with pytest.raises(BadPrivacyRecord):
            WorkerRequest.parse(raw)


def test_control_records_round_trip() -> None:
    receipt = Receipt("clickhouse", "req_1", {"events": 3}, -1, ("act_1",))
    assert parse_control(receipt.to_bytes()) == receipt
    order = DeleteOrder("req_1", "Delete", ("a", "b"), "h", 5, "asked", ("a@b.c",), {"redis": {"profile": 1}})
    assert parse_control(order.to_bytes()) == order
    with pytest.raises(BadPrivacyRecord):
        parse_control(b'{"kind": "other"}')


def test_the_subject_hash_is_keyed_and_names_no_id() -> None:
    one, other = subject_hash(b"key-1", "ann@example.com"), subject_hash(b"key-2", "ann@example.com")
    assert one != other and len(one) == 64 and "ann" not in one
    assert subject_hash(b"key-1", "ann@example.com") == one


def test_request_types_map_to_worker_ops() -> None:
    assert [worker_op(t) for t in ("Suppress_With_Delete", "Delete", "Suppress", "Unsuppress")] == [
        "erase", "erase", "suppress", "unsuppress"
    ]  # fmt: skip
