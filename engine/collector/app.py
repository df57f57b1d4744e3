"""The collector's aiohttp application: Segment's HTTP tracking API in front of the `clickstream` topic. aiohttp,
not Faust web views: the collector faces SDKs and scales with HTTP traffic, independently of the workers; a Faust
app would join the consumer group (and trigger rebalances) whenever a collector starts or stops."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from engine import metrics
from engine.collector.auth import WriteKeys
from engine.collector.decoding import MAX_BATCH_BYTES, MAX_EVENT_BYTES, decode_body, read_body_within
from engine.collector.dedupe import MessageDeduper
from engine.collector.errors import RequestRejected, unavailable
from engine.collector.identity import IdentityStore
from engine.collector.normalise import SINGLE_EVENT_ENDPOINTS, normalise, raw_messages
from engine.collector.producer import ClickstreamProducer, ClickstreamRecord
from engine.config import ConfigError, Settings
from engine.events import Event

log = logging.getLogger(__name__)

ENDPOINTS = ("batch", *SINGLE_EVENT_ENDPOINTS)
# analytics.js (Segment's browser SDK) posts to one-letter paths, with `writeKey` in a text/plain JSON body.
BROWSER_PATHS = {endpoint[0]: endpoint for endpoint in ENDPOINTS}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, Authorization",
    "Access-Control-Max-Age": "86400",
}
RETRY_AFTER_S = 2
MAX_INFLIGHT_REQUESTS = 1000
COLLECTOR_KEY = web.AppKey("collector", "Collector")


class Collector:
    """Turns one authenticated Segment request into acknowledged clickstream records, or a refusal (`ingest`).

    One request, in order; any refusal answers with its status and writes nothing:
    1. write key in the Basic auth header, when there is one → 401 `unauthorized`
    2. the whole body read within `settings.collector_body_timeout_s` → 408 `body_timeout` (connection closed);
       within the size limits → 400 `too_large`. Only then does the request take one of `max_inflight` slots
    3. gzip and JSON decoded → 400 `bad_gzip` / `bad_encoding` / `bad_json`; `writeKey` in the body when there
       was no header → 401
    4. every event valid (`normalise`: `engine.events.parse_event`, event time corrected for the device's clock
       and bounded by the receive time, traits cleaned) → 400 `invalid_events` with indexes and reasons
    5. lead ids re-keyed through recorded merges (`IdentityStore`); every event serialised
    6. messageIds claimed in Redis (`MessageDeduper`): already produced → skipped; in flight elsewhere → 503
    7. produced to `clickstream` and acknowledged by the broker → else 503 `broker_unavailable` + Retry-After
    8. claims confirmed, identify traits and merges recorded; 200 `{"success": true}`
    Redis unreachable in steps 5-6 → 503 `redis_unavailable` + Retry-After. The SDKs retry 5xx (honouring
    Retry-After) and drop 4xx, so only a retry can ever fix a 503 and nothing a retry cannot fix gets one.
    Anything unexpected is answered 500 by the middleware (and counted), before the first produce if it happens
    in steps 1-6.

    Acknowledged: a 200 means every event of the request is in Kafka (acknowledged by the broker) or was produced
    by an earlier request with the same messageId. A refused request leaves Kafka untouched (every event is
    validated and serialised before the first is produced), except a 503 after a partial produce: its
    acknowledged events are confirmed, so the retry skips them (no doubles).

    Back-pressure: at most `max_inflight` requests are processed at once; more get 503 `overloaded` rather than
    queueing without bound while the broker or Redis is slow. A slot is taken once the body is in, so slow
    clients cannot hold one.
    """

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        producer: ClickstreamProducer,
        *,
        max_inflight: int = MAX_INFLIGHT_REQUESTS,
    ) -> None:
        self.settings = settings
        self.max_inflight = max_inflight
        self.inflight = 0
        self.keys = WriteKeys(settings.write_keys)
        self.redis = redis
        self.producer = producer
        self.deduper = MessageDeduper(redis)
        self.identity = IdentityStore(redis)
        if not settings.collector_body_timeout_s > 0 or not settings.max_clock_skew_s >= 0:
            raise ConfigError(
                "NUDGE_COLLECTOR_BODY_TIMEOUT_S must be above 0 and NUDGE_MAX_CLOCK_SKEW_S at least 0 (got "
                f"{settings.collector_body_timeout_s:g} and {settings.max_clock_skew_s:g})"
            )
        self.max_clock_skew_ms = round(settings.max_clock_skew_s * 1000)

    async def ingest(self, request: web.Request, endpoint: str) -> web.Response:
        """The response to one tracking request on `endpoint` (`batch`, `track`, ...); raises `RequestRejected`
        for every refusal (the middleware turns it into the JSON error body). Blocks for the request body (at most
        `settings.collector_body_timeout_s`), then for the broker's acks (at most the producer's request
        timeout)."""
        received_at_ms = int(time.time() * 1000)  # when it hit the API, as Segment stamps it
        header_authenticated = self.keys.check_header(request.headers.get("Authorization"))
        limit = MAX_BATCH_BYTES if endpoint == "batch" else MAX_EVENT_BYTES
        raw = await read_body_within(request, limit, self.settings.collector_body_timeout_s)
        if self.inflight >= self.max_inflight:
            raise unavailable("overloaded", "the collector is at capacity; retry later", retry_after_s=1)
        self.inflight += 1
        try:
            body = decode_body(raw, request.headers.get("Content-Encoding"), limit)
            if not header_authenticated:
                self.keys.check_body(body)
            return await self._ingest(body, endpoint, received_at_ms)
        finally:
            self.inflight -= 1

    async def _ingest(self, body: dict[str, Any], endpoint: str, received_at_ms: int) -> web.Response:
        try:
            events = normalise(raw_messages(body, endpoint), received_at_ms, self.max_clock_skew_ms)
        except RequestRejected as exc:
            metrics.COLLECTOR_EVENTS.labels("unknown", "rejected").inc(max(1, len(exc.errors)))
            raise
        token = uuid.uuid4().hex
        try:
            events = await self.identity.rekey(events)
            records = {e.message_id: ClickstreamRecord.of(e) for e in events}  # all of them before any is sent
            claim = await self.deduper.claim([e.message_id for e in events], token)
        except RedisError as exc:
            log.warning("Redis unavailable: %s", exc)
            raise unavailable(
                "redis_unavailable", "the deduplication store is unreachable; retry later"
            ) from exc
        if claim.in_flight:
            await self._release(claim.fresh, token)
            raise unavailable(
                "in_flight",
                f"{len(claim.in_flight)} events of this request are being processed by another "
                "request; retry shortly",
                retry_after_s=1,
            )
        fresh = set(claim.fresh)
        to_send = [e for e in events if e.message_id in fresh]
        for event in events:
            if event.message_id not in fresh:
                metrics.COLLECTOR_EVENTS.labels(event.type, "duplicate").inc()
        acked, failed = await self.producer.send([records[e.message_id] for e in to_send])
        acked_ids = set(acked)
        acked_events = [e for e in to_send if e.message_id in acked_ids]
        await self._after_ack(acked_events)
        for event in acked_events:
            metrics.COLLECTOR_EVENTS.labels(event.type, "accepted").inc()
        if failed:
            await self._release(failed, token)
            raise unavailable(
                "broker_unavailable",
                f"the broker did not acknowledge {len(failed)} of {len(to_send)} events; "
                "nothing is lost: retry after the Retry-After delay",
                retry_after_s=RETRY_AFTER_S,
            )
        return web.json_response({"success": True})

    async def _after_ack(self, events: list[Event]) -> None:
        """Confirm claims and record identity. The events are safely in Kafka, so failing here must not cause
        a retry that doubles them: log and carry on (unconfirmed claims expire; the worker still merges)."""
        if not events:
            return
        try:
            await self.deduper.confirm([e.message_id for e in events])
            await self.identity.record(events)
        except RedisError as exc:
            log.error("events produced but Redis bookkeeping failed (dedupe/identity may lag): %s", exc)

    async def _release(self, message_ids: list[str], token: str) -> None:
        try:
            await self.deduper.release(message_ids, token)
        except RedisError as exc:  # the pending claims expire on their own after PENDING_TTL_S
            log.warning("could not release dedupe claims: %s", exc)

    async def health(self) -> dict[str, str]:
        """`{"broker": "ok" | "unreachable", "redis": ...}`; never raises."""
        broker = "ok" if await self.producer.healthy() else "unreachable"
        try:
            await self.redis.ping()
            redis_state = "ok"
        except RedisError:
            redis_state = "unreachable"
        return {"broker": broker, "redis": redis_state}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals become JSON responses; anything unexpected becomes a JSON 500 (logged with its traceback); every
    response is counted by endpoint (a bounded label) and status, 500s included, so the error-rate alert sees
    them; tracking API responses carry CORS headers so browsers running analytics.js can read them."""
    name = request.match_info.route.name or "other"
    route = BROWSER_PATHS.get(name, name)
    close_connection = False
    try:
        response = await handler(request)
    except RequestRejected as exc:
        response = web.json_response(exc.body(), status=exc.status, headers=exc.headers())
        close_connection = exc.close_connection
    except web.HTTPException as exc:
        metrics.COLLECTOR_REQUESTS.labels(route, str(exc.status)).inc()
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        body = {"success": False, "code": "internal_error", "message": "unexpected collector error; retry later"}
        response = web.json_response(body, status=500)
    if request.path.startswith("/v1/"):
        response.headers.update(CORS_HEADERS)
    metrics.COLLECTOR_REQUESTS.labels(route, str(response.status)).inc()
    if close_connection:
        await _send_and_close(request, response)
    return response


async def _send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response` now and close the connection: the rest of an unread body is not waited for (aiohttp would
    otherwise linger reading it, so a dripping client would keep the connection after its answer)."""
    response.force_close()  # `Connection: close`
    with contextlib.suppress(ConnectionError):  # the client may be gone already
        await response.prepare(request)
        await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()


def _ingest_handler(endpoint: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return await request.app[COLLECTOR_KEY].ingest(request, endpoint)

    return handle


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)  # the middleware adds the CORS headers


async def healthz(request: web.Request) -> web.Response:
    state = await request.app[COLLECTOR_KEY].health()
    ok = all(v == "ok" for v in state.values())
    return web.json_response(state, status=200 if ok else 503)


async def metrics_view(request: web.Request) -> web.Response:
    body, content_type = metrics.render_latest()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def create_app(
    settings: Settings, *, produce_timeout_ms: int = 5000, max_inflight: int = MAX_INFLIGHT_REQUESTS
) -> web.Application:
    """The collector application for `settings`: `POST /v1/{batch,track,page,screen,identify,alias,group}` and
    analytics.js's one-letter aliases (`/v1/b`, `/v1/t`, ...; CORS headers and `OPTIONS` preflight), `GET /healthz`,
    `GET /metrics`. Connections open lazily and close on cleanup.
    `produce_timeout_ms` bounds how long a request waits for the broker before answering 503;
    `max_inflight` is how many tracking requests are processed at once before new ones get 503."""
    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    producer = ClickstreamProducer(settings, request_timeout_ms=produce_timeout_ms)
    # auto_decompress off: decoding.py inflates gzip itself, with a size cap and a clear 400 when broken.
    app = web.Application(middlewares=[errors_and_metrics], handler_args={"auto_decompress": False})
    app[COLLECTOR_KEY] = Collector(settings, redis, producer, max_inflight=max_inflight)
    for endpoint in ENDPOINTS:
        app.router.add_post(f"/v1/{endpoint}", _ingest_handler(endpoint), name=endpoint)
    for short, endpoint in BROWSER_PATHS.items():
        app.router.add_post(f"/v1/{short}", _ingest_handler(endpoint), name=short)
    app.router.add_route("OPTIONS", "/v1/{path}", preflight, name="preflight")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics_view, name="metrics")

    async def connect(_: web.Application) -> None:
        try:  # connect now to fail fast in logs, but keep serving: requests get 503 until the broker is up
            await producer.producer()
        except Exception as exc:
            log.warning("collector started without the broker: %s", exc)

    async def close(_: web.Application) -> None:
        await producer.stop()
        await redis.aclose()

    app.on_startup.append(connect)
    app.on_cleanup.append(close)
    return app
