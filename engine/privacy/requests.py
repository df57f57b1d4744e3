"""Accepting a privacy request and reading where it stands.

A request is accepted in one step (`PrivacyRequests.submit`, used by `nudge privacy erase|suppress|unsuppress` and
the collector's `POST /v1/regulations`): the ids of the person are resolved, the edge stops taking their events
(suppression markers), the request's bookkeeping is written to Redis and one `WorkerRequest` per id goes to
`privacy-requests`. The rest happens asynchronously (`engine.privacy.coordinator`).

Redis keys (none names a lead: markers carry the keyed hash, request ids are random):
- `nudge:suppressed:{subject hash}`: the collector drops events of that id (no expiry; `Unsuppress` removes it).
- `nudge:privacy:request:{request id}`: a hash with the request's type, stage, per-store counts, and while it is
  in progress the ids and email addresses it erases (removed once it completes; the hash expires 90 days later).
- `nudge:privacy:active`: the ids of requests in progress.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from engine.config import Settings
from engine.kafka import topics
from engine.kafka.admin import ensure_topics
from engine.kafka.security import client_options
from engine.privacy.identities import connected, emails_of, merge_graph
from engine.privacy.records import (
    DELETING,
    REQUEST_TYPES,
    SUPPRESSING,
    UNSUPPRESS,
    WorkerRequest,
    subject_hash,
    worker_op,
)

SUPPRESSED_PREFIX = "nudge:suppressed:"
REQUEST_PREFIX = "nudge:privacy:request:"
ACTIVE_KEY = "nudge:privacy:active"
DONE_TTL_S = 90 * 86400
MAX_SUBJECTS = 100  # per request, as Segment's regulation API allows

# Stages of a request, in order (`Unsuppress` and `Suppress` end after the worker).
WORKER, DISPATCHER, REDIS, SINK_BARRIER, CLICKHOUSE, DONE = (
    "worker",
    "dispatcher",
    "redis",
    "sink_barrier",
    "clickhouse",
    "done",
)


class BadRequest(ValueError):
    """A request that cannot be accepted (unknown type, no subject, too many)."""


def hash_key(settings: Settings) -> bytes:
    """The HMAC key of lead ids kept in receipts and markers: `NUDGE_PRIVACY_HASH_KEY`. Without it (development)
    a key derived from the app id, which anyone can recompute: production sets its own (docs/privacy.md)."""
    return (settings.privacy_hash_key or f"nudge-development-privacy-key:{settings.app_id}").encode()


def suppressed_key(key: bytes, lead_id: str) -> str:
    return SUPPRESSED_PREFIX + subject_hash(key, lead_id)


def request_key(request_id: str) -> str:
    return REQUEST_PREFIX + request_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class RequestStatus:
    """Where a request stands, per store. `counts[store]` says what each store removed (never whose)."""

    request_id: str
    request_type: str
    stage: str
    requested_at_ms: int
    completed_at_ms: int | None
    ids: int
    worker_confirmed: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.stage == DONE

    def pending(self) -> list[str]:
        """The stores that have not confirmed yet, in the order the request reaches them."""
        order = [WORKER, DISPATCHER, REDIS, SINK_BARRIER, CLICKHOUSE]
        if self.done:
            return []
        names = {WORKER: f"worker ({self.worker_confirmed}/{self.ids} ids confirmed)", DISPATCHER: "dispatcher"}
        names[SINK_BARRIER] = "sink (catching up)"
        if self.request_type not in DELETING:
            return [names[WORKER]]
        start = order.index(self.stage) if self.stage in order else 0
        return [names.get(stage, stage) for stage in order[start:]]

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "type": self.request_type,
            "stage": self.stage,
            "done": self.done,
            "requested_at_ms": self.requested_at_ms,
            "completed_at_ms": self.completed_at_ms,
            "ids": self.ids,
            "worker_confirmed": self.worker_confirmed,
            "counts": self.counts,
            "pending": self.pending(),
        }


class PrivacyRequests:
    """Accepts requests and reads their status. `submit` blocks for a few Redis round trips, one SCAN of the
    alias keys and the broker's acknowledgement of the worker requests; it raises `BadRequest` for a request it
    refuses, and Redis or Kafka errors as they come (nothing is half-accepted before the ids are resolved; a
    failure after the bookkeeping was written leaves a request that the coordinator re-sends)."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.key = hash_key(settings)

    async def submit(self, request_type: str, subjects: Sequence[str], reason: str = "") -> str:
        """Accept a request for `subjects` (lead ids: user ids or anonymous ids) and return its request id."""
        if request_type not in REQUEST_TYPES:
            raise BadRequest(f"regulationType must be one of {', '.join(REQUEST_TYPES)}")
        named = [s for s in dict.fromkeys(subjects) if isinstance(s, str) and s.strip()]
        if not named:
            raise BadRequest("subjectIds must name at least one id")
        if len(named) > MAX_SUBJECTS:
            raise BadRequest(f"at most {MAX_SUBJECTS} subjectIds per request")
        ids = connected(named, await merge_graph(self.redis))
        terms = await emails_of(self.redis, ids) if request_type in DELETING else []
        request_id = f"req_{uuid.uuid4().hex}"
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            for lead in ids:
                if request_type in SUPPRESSING:
                    pipe.set(suppressed_key(self.key, lead), now_ms)
                elif request_type == UNSUPPRESS:
                    pipe.delete(suppressed_key(self.key, lead))
            pipe.hset(
                request_key(request_id),
                mapping={
                    "type": request_type,
                    "reason": reason,
                    "stage": WORKER,
                    "requested_at_ms": now_ms,
                    "subject_hash": ",".join(subject_hash(self.key, s) for s in named),
                    "n": len(ids),
                    "ids": orjson.dumps(ids),
                    "terms": orjson.dumps(terms),
                    "sent_at_ms": now_ms,
                },
            )
            pipe.sadd(ACTIVE_KEY, request_id)
            await pipe.execute()
        await send_worker_requests(self.settings, request_id, request_type, ids)
        return request_id

    async def status(self, request_id: str) -> RequestStatus | None:
        """The request's status, or None for an unknown (or long expired) request id."""
        raw = {_text(k): _text(v) for k, v in (await self.redis.hgetall(request_key(request_id))).items()}
        if not raw:
            return None
        return status_from_hash(request_id, raw)


def status_from_hash(request_id: str, raw: dict[str, str]) -> RequestStatus:
    counts: dict[str, dict[str, int]] = {}
    worker: dict[str, int] = {}
    confirmed = 0
    for name, value in raw.items():
        if name.startswith("worker:"):
            confirmed += 1
            for kind, n in orjson.loads(value).items():
                worker[kind] = worker.get(kind, 0) + int(n)
        elif name.startswith("counts:"):
            counts[name.removeprefix("counts:")] = {k: int(v) for k, v in orjson.loads(value).items()}
    if confirmed:
        counts = {"worker": worker, **counts}
    completed = raw.get("completed_at_ms")
    return RequestStatus(
        request_id,
        raw.get("type", ""),
        raw.get("stage", WORKER),
        int(raw.get("requested_at_ms") or 0),
        int(completed) if completed else None,
        int(raw.get("n") or 0),
        confirmed,
        counts,
    )


async def send_worker_requests(
    settings: Settings, request_id: str, request_type: str, ids: Sequence[str], only: Iterable[int] | None = None
) -> None:
    """One `WorkerRequest` per id (or per index in `only`) to `privacy-requests`, keyed by the id (the default
    partitioner, as clickstream producers key a lead's events), acknowledged by the broker before returning."""
    await ensure_topics(settings, (topics.PRIVACY_REQUESTS, topics.PRIVACY))
    wanted = set(only) if only is not None else None
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", **client_options(settings))
    await producer.start()
    try:
        op = worker_op(request_type)
        sends = []
        for index, lead in enumerate(ids):
            if wanted is not None and index not in wanted:
                continue
            request = WorkerRequest(op, lead, request_id, index, suppress=request_type in SUPPRESSING)
            sends.append(
                await producer.send(settings.topic(topics.PRIVACY_REQUESTS), request.to_bytes(), key=lead.encode())
            )
        for delivery in sends:
            await delivery
    finally:
        await producer.stop()
