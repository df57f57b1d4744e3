"""The assignment outbox relay: every change the store's Lua scripts record (assigned, reassigned, acked, passed,
released, queued, dequeued, SLA changes) is published to `lead-updates`, whichever process made it (dispatcher,
`nudge reps serve`, the CLI), so the ClickHouse sink keeps the whole assignment history."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import ResponseError

from engine.assignment.model import Change
from engine.assignment.store import AssignmentStore

Send = Callable[[str, bytes], Awaitable[None]]  # (lead id = record key, record value); returns once acked


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ChangeRelay:
    """Reads the `changes` stream through the Redis consumer group `GROUP` and hands each change to `send` as a
    `lead-updates` record (`model.Change.lead_update()` plus `change_id`, the stream entry id).

    Contract:
    - At least once: an entry is acknowledged (XACK) only after `send` returned (the broker acked the produce). A
      relay that dies with entries in hand leaves them pending; any relay claims them after `claim_idle_ms`
      (XAUTOCLAIM). A rare duplicate therefore carries the same `change_id`: readers may drop it.
    - Order: one relay sends its entries in stream order, so one lead's changes keep their order on its partition.
      Several relays (several `nudge reps serve`) split the entries between them.
    - `run_once()` handles at most `batch` new entries plus `batch` claimed ones and returns how many it sent;
      it never blocks on Redis. Redis and `send` errors propagate (the entries stay pending and come back).
    - The stream keeps about `store.CHANGES_CAP` entries: a relay stopped for longer than that loses the oldest.
    """

    GROUP = "lead-updates"

    def __init__(
        self,
        store: AssignmentStore,
        send: Send,
        *,
        consumer: str | None = None,
        batch: int = 200,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.store = store
        self.send = send
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.store.redis.xgroup_create(self.store.changes_key, self.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def run_once(self) -> int:
        await self._ensure_group()
        redis, key = self.store.redis, self.store.changes_key
        claimed = await redis.xautoclaim(
            key, self.GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        entries = list(claimed[1]) if claimed else []
        fresh = await redis.xreadgroup(self.GROUP, self.consumer, {key: ">"}, count=self.batch)
        for _stream, items in fresh or []:
            entries += items
        sent = 0
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending: nothing left to send
                await redis.xack(key, self.GROUP, entry_id)
                continue
            values = {_s(k): _s(v) for k, v in fields.items()}
            lead_id = values.get("lead", "")
            record = orjson.loads(Change(lead_id, orjson.loads(values.get("entry") or "{}")).lead_update())
            record["change_id"] = _s(entry_id)
            await self.send(lead_id, orjson.dumps(record))
            await redis.xack(key, self.GROUP, entry_id)
            sent += 1
        return sent
