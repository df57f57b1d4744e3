"""The collector's side of privacy (docs/privacy.md): Segment's regulation API (`POST /v1/regulations`,
`GET /v1/regulations/{id}`) for erasure and suppression requests, the edge's suppression check, and the privacy
coordinator (`engine.privacy.coordinator`), which runs inside the collector because the collector is the service
that has both Redis and the broker and is always deployed."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from engine import metrics
from engine.config import Settings
from engine.events import Event

# engine.privacy is imported where it is used: it reads the collector's identity module, whose package imports this
# one (engine.collector's __init__ loads the app), so a module-level import would be circular.

log = logging.getLogger(__name__)

SUBJECT_TYPES = ("USER_ID", "ANONYMOUS_ID")
MAX_BODY_BYTES = 64 * 1024


class Suppression:
    """Drops the events of suppressed leads at the edge: an event naming a suppressed id as its lead, its
    anonymous id or its previous id is neither produced nor recorded, only counted
    (`nudge_privacy_dropped_events_total{source="collector"}`). One `MGET` per request of the keyed hashes of its
    ids (`nudge:suppressed:{hash}`). Redis errors propagate (the request gets 503, like any Redis failure)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        from engine.privacy.requests import hash_key, suppressed_key

        self.redis = redis
        self.key = hash_key(settings)
        self._marker = suppressed_key

    async def drop(self, events: list[Event]) -> list[Event]:
        ids = sorted({i for e in events for i in (e.lead_id, e.anonymous_id, e.previous_id) if i})
        if not ids:
            return events
        found = await self.redis.mget([self._marker(self.key, i) for i in ids])
        suppressed = {i for i, value in zip(ids, found, strict=True) if value is not None}
        if not suppressed:
            return events
        kept = [e for e in events if not suppressed.intersection((e.lead_id, e.anonymous_id, e.previous_id))]
        metrics.PRIVACY_DROPPED_EVENTS.labels("collector").inc(len(events) - len(kept))
        return kept


def _authorised(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"success": False, "code": code, "message": message}, status=status)


def _subjects(body: Any) -> tuple[str, list[str], str]:
    from engine.privacy.requests import BadRequest

    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    subject_type = body.get("subjectType", "USER_ID")
    if subject_type not in SUBJECT_TYPES:
        raise BadRequest(f"subjectType must be one of {', '.join(SUBJECT_TYPES)}")
    ids = body.get("subjectIds")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("subjectIds must be a list of ids")
    reason = body.get("reason", "")
    return str(body.get("regulationType", "")), ids, reason if isinstance(reason, str) else ""


class Regulations:
    """`POST /v1/regulations` (body `{"regulationType": "Suppress_With_Delete" | "Delete" | "Suppress" |
    "Unsuppress", "subjectType": "USER_ID", "subjectIds": [...]}`) answers `{"data": {"regulateId": ...}}` as
    Segment's API does, once the request is accepted (`PrivacyRequests.submit`); `GET /v1/regulations/{id}` its
    status. Both need `Authorization: Bearer <NUDGE_ADMIN_TOKEN>`: a write key, or no token configured, is 401."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        from engine.privacy.requests import PrivacyRequests

        self.settings = settings
        self.requests = PrivacyRequests(settings, redis)

    async def create(self, request: web.Request) -> web.Response:
        from engine.privacy.requests import BadRequest

        if not _authorised(request, self.settings.admin_token):
            return _error(401, "unauthorized", "send Authorization: Bearer <NUDGE_ADMIN_TOKEN>")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return _error(400, "too_large", "the body is over 64 KB")
        try:
            request_type, ids, reason = _subjects(orjson.loads(raw))
            request_id = await self.requests.submit(request_type, ids, reason)
        except orjson.JSONDecodeError:
            return _error(400, "bad_json", "the body is not JSON")
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        metrics.PRIVACY_REQUESTS.labels("collector", "accepted").inc()
        return web.json_response({"data": {"regulateId": request_id}})

    async def show(self, request: web.Request) -> web.Response:
        if not _authorised(request, self.settings.admin_token):
            return _error(401, "unauthorized", "send Authorization: Bearer <NUDGE_ADMIN_TOKEN>")
        status = await self.requests.status(request.match_info["request_id"])
        if status is None:
            return _error(404, "unknown_request", "no privacy request by that id")
        return web.json_response({"data": status.to_json()})


def register(app: web.Application, settings: Settings, redis: aioredis.Redis) -> None:
    """Add the regulation routes to the collector's `app` and run the privacy coordinator beside it (started with
    the app, stopped on cleanup)."""
    from engine.privacy.coordinator import Coordinator

    regulations = Regulations(settings, redis)
    app.router.add_post("/v1/regulations", regulations.create, name="regulations")
    app.router.add_get("/v1/regulations/{request_id}", regulations.show, name="regulation")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(_: web.Application) -> None:
        tasks.append(asyncio.create_task(Coordinator(settings, redis).run(stop), name="privacy-coordinator"))

    async def close(_: web.Application) -> None:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 1.0)  # then cancelled: every step is idempotent

    app.on_startup.append(start)
    app.on_cleanup.insert(0, close)  # before the collector closes Redis
