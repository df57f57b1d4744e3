"""The privacy pipeline's records, and the keyed hash of a lead id. Pure (standard library and orjson): the worker
reads `WorkerRequest`s, the sink reads `DeleteOrder`s, and both answer with `Receipt`s.

Topics (names in `engine.kafka.topics`):
- `privacy-requests`: worker-internal, co-partitioned with `clickstream`, key = the lead id: one `WorkerRequest`
  per id of a request, so the worker that owns the lead's state handles it in order with the partition's events.
- `privacy`: key = the request id: `Receipt`s from the worker and the sink for the coordinator, and the
  coordinator's `DeleteOrder` for the sink. Consumers skip kinds that are not theirs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson

# Segment's regulation types, plus Nudge's own `Unsuppress` (the CLI's `nudge privacy unsuppress`).
SUPPRESS_WITH_DELETE = "Suppress_With_Delete"
DELETE = "Delete"
SUPPRESS = "Suppress"
UNSUPPRESS = "Unsuppress"
REQUEST_TYPES = (SUPPRESS_WITH_DELETE, DELETE, SUPPRESS, UNSUPPRESS)
DELETING = frozenset({SUPPRESS_WITH_DELETE, DELETE})
SUPPRESSING = frozenset({SUPPRESS_WITH_DELETE, SUPPRESS})

# What the worker does with one lead id.
ERASE = "erase"  # drop the lead's state and pending deadlines (with `suppress`: keep only a suppression marker)
MARK_SUPPRESSED = "suppress"  # keep the state, drop the lead's later events
CLEAR_SUPPRESSED = "unsuppress"
WORKER_OPS = (ERASE, MARK_SUPPRESSED, CLEAR_SUPPRESSED)


class BadPrivacyRecord(ValueError):
    """A `privacy-requests` or `privacy` record that is not one of ours."""


def subject_hash(key: bytes, lead_id: str) -> str:
    """HMAC-SHA256 of the lead id under the deployment's privacy key (`NUDGE_PRIVACY_HASH_KEY`), hex: what the
    receipts and the edge's suppression markers keep instead of the id. Without the key nobody can test a guessed
    id (an email) against it; with it, an auditor can show that a given id was erased."""
    return hmac.new(key, lead_id.encode(), hashlib.sha256).hexdigest()


def worker_op(request_type: str) -> str:
    """The worker's op for a request type."""
    if request_type in DELETING:
        return ERASE
    return MARK_SUPPRESSED if request_type == SUPPRESS else CLEAR_SUPPRESSED


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    """`{"op", "lead_id", "request_id", "index", "suppress"}` on `privacy-requests`, keyed by `lead_id`; `index`
    numbers the ids of one request, so the coordinator knows which answered."""

    op: str
    lead_id: str
    request_id: str
    index: int
    suppress: bool = False

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "op": self.op,
                "lead_id": self.lead_id,
                "request_id": self.request_id,
                "index": self.index,
                "suppress": self.suppress,
            }
        )

    @classmethod
    def parse(cls, raw: bytes | None) -> WorkerRequest:
        """Raises `BadPrivacyRecord` for anything but a well-formed request."""
        try:
            doc: Any = orjson.loads(raw or b"")
            op = doc["op"]
            lead_id, request_id, index = doc["lead_id"], doc["request_id"], doc["index"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BadPrivacyRecord(f"not a privacy request ({type(exc).__name__})") from None
        if op not in WORKER_OPS or not isinstance(lead_id, str) or not lead_id or not isinstance(request_id, str):
            raise BadPrivacyRecord("not a privacy request (op, lead_id or request_id)")
        if isinstance(index, bool) or not isinstance(index, int):
            raise BadPrivacyRecord("not a privacy request (index)")
        return cls(op, lead_id, request_id, index, bool(doc.get("suppress")))


@dataclass(frozen=True, slots=True)
class Receipt:
    """`{"kind": "receipt", "store", "request_id", "index", "counts", "action_ids"}` on `privacy`: one store did
    its part. `counts` names what it removed, never whose; `index` is the id's number for the worker (-1 for a
    store answering for the whole request); `action_ids` (the sink) lets the coordinator drop the idempotency
    claims of the lead's actions."""

    store: str
    request_id: str
    counts: dict[str, int]
    index: int = -1
    action_ids: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "receipt",
                "store": self.store,
                "request_id": self.request_id,
                "index": self.index,
                "counts": self.counts,
                "action_ids": list(self.action_ids),
            }
        )


@dataclass(frozen=True, slots=True)
class DeleteOrder:
    """`{"kind": "delete", ...}` on `privacy`: the coordinator tells the sink to delete the rows of `ids` (every id
    of the lead) and of rows naming `terms` (its email addresses) in dead letters, then keep the receipt.
    `counts` are the other stores' counts for the receipt row; `subject_hash` is the keyed hash of the id the
    request named."""

    request_id: str
    request_type: str
    ids: tuple[str, ...]
    subject_hash: str
    requested_at_ms: int
    reason: str = ""
    terms: tuple[str, ...] = ()
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "delete",
                "request_id": self.request_id,
                "type": self.request_type,
                "ids": list(self.ids),
                "subject_hash": self.subject_hash,
                "requested_at_ms": self.requested_at_ms,
                "reason": self.reason,
                "terms": list(self.terms),
                "counts": self.counts,
            }
        )


def parse_control(raw: bytes | None) -> Receipt | DeleteOrder:
    """A `privacy` record; raises `BadPrivacyRecord` for anything else."""
    try:
        doc: Any = orjson.loads(raw or b"")
        kind = doc.get("kind")
        if kind == "receipt":
            return Receipt(
                str(doc["store"]),
                str(doc["request_id"]),
                {str(k): int(v) for k, v in (doc.get("counts") or {}).items()},
                int(doc.get("index", -1)),
                tuple(str(a) for a in doc.get("action_ids") or ()),
            )
        if kind == "delete":
            return DeleteOrder(
                str(doc["request_id"]),
                str(doc["type"]),
                tuple(str(i) for i in doc["ids"]),
                str(doc["subject_hash"]),
                int(doc["requested_at_ms"]),
                str(doc.get("reason") or ""),
                tuple(str(t) for t in doc.get("terms") or ()),
                {str(s): {str(k): int(v) for k, v in c.items()} for s, c in (doc.get("counts") or {}).items()},
            )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BadPrivacyRecord(f"not a privacy record ({type(exc).__name__})") from None
    raise BadPrivacyRecord(f"unknown privacy record kind {kind!r}")
