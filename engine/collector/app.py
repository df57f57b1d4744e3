"""The collector's aiohttp application: Segment's HTTP tracking API in front of the `clickstream` topic. aiohttp,
not Faust web views: the collector faces SDKs and scales with HTTP traffic, independently of the workers; a Faust
app would join the consumer group (and trigger rebalances) whenever a collector starts or stops."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from redis.exceptions import RedisError

from engine import metrics
from engine.collector.analytics_js import public_base, settings_document
from engine.collector.auth import WriteKeys
from engine.collector.decoding import MAX_BATCH_BYTES, MAX_EVENT_BYTES, decode_body, read_body_within
from engine.collector.dedupe import MessageDeduper
from engine.collector.errors import RequestRejected, bad_request, unavailable
from engine.collector.identity import IdentityStore, MergeRefusal, merge_of
from engine.collector.limits import RateLimiter, client_address
from engine.collector.normalise import SINGLE_EVENT_ENDPOINTS, parse_messages, raw_messages, unique_by_message_id
from engine.collector.producer import ClickstreamProducer, ClickstreamRecord
from engine.collector.regulations import Suppression
from engine.collector.regulations import register as register_regulations
from engine.collector.trust import Auth, Marked, UserHashes, mark
from engine.collector.unsubscribe import Unsubscribe
from engine.config import ConfigError, Settings
from engine.events import TRUST_MARKER, Event

log = logging.getLogger(__name__)

ENDPOINTS = ("batch", *SINGLE_EVENT_ENDPOINTS)
# analytics.js (Segment's browser SDK) posts to one-letter paths, with `writeKey` in a text/plain JSON body.
BROWSER_PATHS = {endpoint[0]: endpoint for endpoint in ENDPOINTS}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, Authorization",
    "Access-Control-Max-Age": "86400",
}
RETRY_AFTER_S = 2
MAX_INFLIGHT_REQUESTS = 1000
ACCESS_LOG = logging.getLogger("engine.collector.access")


class Collector:
    """Turns one authenticated Segment request into acknowledged clickstream records, or a refusal (`ingest`).

    One request, in order; any refusal answers with its status and writes nothing:
    1. write key in the Basic auth header, when there is one → 401 `unauthorized`; unless it is a server key, one
       token from the client address's bucket → 429 `rate_limited` + Retry-After (`RateLimiter`)
    2. the whole body read within `settings.collector_body_timeout_s` → 408 `body_timeout` (connection closed);
       within the size limits → 400 `too_large`. Only then does the request take one of `max_inflight` slots
    3. gzip and JSON decoded → 400 `bad_gzip` / `bad_encoding` / `bad_json`; `writeKey` in the body when there
       was no header → 401; at most `settings.collector_max_batch_events` events → 400 `too_many_events`
    4. one token per event from the write key's bucket (and the client address's, for a browser key) → 429
    5. every event valid (`parse_messages`: `engine.events.parse_event`, event time corrected for the device's
       clock and bounded by the receive time, traits cleaned and at most `collector_max_traits`) → 400
       `invalid_events` with indexes and reasons; repeated messageIds of the request dropped (counted duplicate)
    6. every event marked with what its sender proved (`engine.collector.trust.mark`: `context.nudge`, protected
       traits of untrusted events moved under `traits.unverified`); merges guarded (`IdentityStore.guard`): a
       browser `alias` that may not merge → 400 `invalid_events` (reason `merge_refused`), a browser `identify`
       that may not → produced without its `anonymousId` (no merge; counted)
    7. lead ids re-keyed through recorded merges (`IdentityStore.rekey`); every event serialised
    8. messageIds claimed in Redis (`MessageDeduper`): already produced → skipped; in flight elsewhere → 503
    9. produced to `clickstream` and acknowledged by the broker → else 503 `broker_unavailable` + Retry-After
    10. claims confirmed, known leads, identify traits and merges recorded; 200 `{"success": true}`
    Redis unreachable in steps 6-8 → 503 `redis_unavailable` + Retry-After. The SDKs retry 5xx and 429 (honouring
    Retry-After) and drop other 4xx, so only a retry can ever fix a 503 or 429 and nothing a retry cannot fix gets
    one. Anything unexpected is answered 500 by the middleware (and counted), before the first produce if it
    happens in steps 1-8.

    Acknowledged: a 200 means every event of the request is in Kafka (acknowledged by the broker) or was produced
    by an earlier request with the same messageId. A refused request leaves Kafka untouched (every event is
    validated and serialised before the first is produced), except a 503 after a partial produce: its
    acknowledged events are confirmed, so the retry skips them (no doubles).

    Back-pressure: at most `max_inflight` requests are processed at once; more get 503 `overloaded` rather than
    queueing without bound while the broker or Redis is slow. A slot is taken once the body is in, so slow
    clients cannot hold one. Floods from one client address or write key are refused by the rate limits (429)
    before they cost Redis or the broker anything.
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
        self.keys = WriteKeys(settings.write_keys, settings.server_write_keys)
        self.hashes = UserHashes(settings.user_hash_secret.split(","))
        self.redis = redis
        self.producer = producer
        self.deduper = MessageDeduper(redis)
        self.suppression = Suppression(redis, settings)  # privacy: suppressed leads are dropped at the edge
        _check_edge_settings(settings)
        self.identity = IdentityStore(
            redis, ttl_s=round(settings.profile_ttl_days * 86400), max_fields=settings.profile_max_fields
        )
        self.limiter = RateLimiter(
            settings.rate_limit_key_events_per_s,
            settings.rate_limit_key_burst,
            settings.rate_limit_ip_events_per_s,
            settings.rate_limit_ip_burst,
        )
        self.max_clock_skew_ms = round(settings.max_clock_skew_s * 1000)
        public_base(settings.collector_public_url, None, "https")  # refuses a malformed URL at start-up

    def client_address(self, request: web.Request) -> str | None:
        return client_address(request.remote, request.headers, self.settings.collector_forwarded_hops)

    def admit(self, key: str | None, address: str | None, key_cost: int, address_cost: int) -> None:
        """Take rate-limit tokens (see `RateLimiter.admit`); a refusal is counted per event it concerns."""
        try:
            self.limiter.admit(key, address, key_cost, address_cost)
        except RequestRejected:
            metrics.COLLECTOR_EVENTS.labels("unknown", "rate_limited").inc(max(key_cost, address_cost))
            raise

    async def ingest(self, request: web.Request, endpoint: str) -> web.Response:
        """The response to one tracking request on `endpoint` (`batch`, `track`, ...); raises `RequestRejected`
        for every refusal (the middleware turns it into the JSON error body). Blocks for the request body (at most
        `settings.collector_body_timeout_s`), then for the broker's acks (at most the producer's request
        timeout)."""
        received_at_ms = int(time.time() * 1000)  # when it hit the API, as Segment stamps it
        header = request.headers.get("Authorization")
        header_auth = self.keys.check_header(header)
        address = self.client_address(request)
        if header_auth is not Auth.SERVER:
            self.admit(None, address, 0, 1)
        limit = MAX_BATCH_BYTES if endpoint == "batch" else MAX_EVENT_BYTES
        raw = await read_body_within(request, limit, self.settings.collector_body_timeout_s)
        if self.inflight >= self.max_inflight:
            raise unavailable("overloaded", "the collector is at capacity; retry later", retry_after_s=1)
        self.inflight += 1
        try:
            body = decode_body(raw, request.headers.get("Content-Encoding"), limit)
            auth = header_auth or self.keys.check_body(body)
            key = WriteKeys.key_from_header(header) if header_auth else body.get("writeKey")
            messages = raw_messages(body, endpoint)
            cap = self.settings.collector_max_batch_events
            if len(messages) > cap:
                metrics.COLLECTOR_EVENTS.labels("unknown", "rejected").inc(len(messages))
                raise bad_request(
                    "too_many_events",
                    f"the request carries {len(messages)} events; the limit is {cap} per request: send smaller "
                    "batches",
                )
            cost = max(1, len(messages))
            self.admit(key if isinstance(key, str) else None, address if auth is Auth.CLIENT else None, cost, cost - 1)
            return await self._ingest(messages, auth, received_at_ms)
        finally:
            self.inflight -= 1

    async def _ingest(self, messages: list[Any], auth: Auth, received_at_ms: int) -> web.Response:
        try:
            parsed = parse_messages(
                messages, received_at_ms, self.max_clock_skew_ms, self.settings.collector_max_traits
            )
        except RequestRejected as exc:
            metrics.COLLECTOR_EVENTS.labels("unknown", "rejected").inc(max(1, len(exc.errors)))
            raise
        unique = unique_by_message_id(parsed)
        marked = {m.event.message_id: m for m in (mark(e, auth, self.hashes) for e in unique)}
        events = [m.event for m in marked.values()]
        token = uuid.uuid4().hex
        try:
            refused = await self.identity.guard(events)
            events = self._without_refused_merges(events, refused, parsed)
            events = await self.identity.rekey(events)
            events = await self.suppression.drop(events)  # events of suppressed leads: counted, never produced
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
        acked, failed = await self.producer.send([records[e.message_id] for e in to_send])
        acked_ids = set(acked)
        acked_events = [e for e in to_send if e.message_id in acked_ids]
        await self._after_ack(acked_events)
        for event in acked_events:
            metrics.COLLECTOR_EVENTS.labels(event.type, "accepted").inc()
            self._count_marks(marked[event.message_id], event.message_id in refused)
        if failed:
            await self._release(failed, token)
            raise unavailable(
                "broker_unavailable",
                f"the broker did not acknowledge {len(failed)} of {len(to_send)} events; "
                "nothing is lost: retry after the Retry-After delay",
                retry_after_s=RETRY_AFTER_S,
            )
        # Counted once the request succeeded, so an SDK's retry of a failed request does not count them again.
        for event in events:
            if event.message_id not in fresh:
                metrics.COLLECTOR_EVENTS.labels(event.type, "duplicate").inc()
        repeated = Counter(e.type for e in parsed) - Counter(e.type for e in unique)
        for event_type, extra in repeated.items():  # a messageId repeated inside the request
            metrics.COLLECTOR_EVENTS.labels(event_type, "duplicate").inc(extra)
        return web.json_response({"success": True})

    @staticmethod
    def _without_refused_merges(
        events: list[Event], refused: dict[str, MergeRefusal], parsed: list[Event]
    ) -> list[Event]:
        """`events` with the refused merges taken out: a refused `alias` refuses the request (400, as any invalid
        event: the SDKs drop it, a retry cannot help); a refused `identify` goes on without its `anonymousId` (the
        login it reports is real; only the merge is not), noted in `context.nudge.refusedMerge`."""
        if not refused:
            return events
        index: dict[str, int] = {}
        for position, event in enumerate(parsed):
            index.setdefault(event.message_id, position)
        errors = [
            {
                "index": index[e.message_id],
                "reason": "merge_refused",
                "detail": f"a browser write key may not merge previousId into userId ({refused[e.message_id].value}); "
                "send the alias with a server write key",
            }
            for e in events
            if e.type == "alias" and e.message_id in refused
        ]
        if errors:
            metrics.COLLECTOR_EVENTS.labels("alias", "rejected").inc(len(errors))
            raise bad_request(
                "invalid_events",
                f"{len(errors)} of {len(parsed)} events are invalid; nothing from this request was accepted.",
                errors=errors,
            )
        out = []
        for event in events:
            reason = refused.get(event.message_id)
            merge = merge_of(event)
            if reason is None or merge is None:
                out.append(event)
                continue
            marker = {**event.context[TRUST_MARKER], "refusedMerge": {"from": merge[0], "reason": reason.value}}
            context = {**event.context, TRUST_MARKER: marker}
            out.append(dataclasses.replace(event, anonymous_id=None, context=context))
        return out

    @staticmethod
    def _count_marks(marked: Marked, merge_refused: bool) -> None:
        event_type = marked.event.type
        if marked.traits_moved:
            metrics.COLLECTOR_EVENTS.labels(event_type, "untrusted_traits").inc()
        if marked.bad_user_hash:
            metrics.COLLECTOR_EVENTS.labels(event_type, "bad_user_hash").inc()
        if merge_refused:
            metrics.COLLECTOR_EVENTS.labels(event_type, "merge_refused").inc()

    async def _after_ack(self, events: list[Event]) -> None:
        """Confirm claims and record identity. The events are safely in Kafka, so failing here must not cause
        a retry that doubles them: log and carry on (unconfirmed claims expire; the worker still merges)."""
        if not events:
            return
        try:
            await self.deduper.confirm([e.message_id for e in events])
            recorded = await self.identity.record(events)
        except RedisError as exc:
            log.error("events produced but Redis bookkeeping failed (dedupe/identity may lag): %s", exc)
            return
        for event in recorded.capped:
            metrics.COLLECTOR_EVENTS.labels(event.type, "profile_capped").inc()

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


COLLECTOR_KEY = web.AppKey("collector", Collector)


def _check_edge_settings(settings: Settings) -> None:
    """`ConfigError` for collector settings it cannot work with, naming the variable."""
    problems = [
        (settings.collector_body_timeout_s > 0, "NUDGE_COLLECTOR_BODY_TIMEOUT_S must be above 0"),
        (settings.max_clock_skew_s >= 0, "NUDGE_MAX_CLOCK_SKEW_S must be at least 0"),
        (settings.collector_max_batch_events >= 1, "NUDGE_COLLECTOR_MAX_BATCH_EVENTS must be at least 1"),
        (settings.collector_max_traits >= 1, "NUDGE_COLLECTOR_MAX_TRAITS must be at least 1"),
        (settings.profile_max_fields >= 2, "NUDGE_PROFILE_MAX_FIELDS must be at least 2"),
        (settings.profile_ttl_days > 0, "NUDGE_PROFILE_TTL_DAYS must be above 0"),
        (settings.rate_limit_key_burst >= 1, "NUDGE_RATE_LIMIT_KEY_BURST must be at least 1"),
        (settings.rate_limit_ip_burst >= 1, "NUDGE_RATE_LIMIT_IP_BURST must be at least 1"),
        (settings.collector_forwarded_hops >= 0, "NUDGE_COLLECTOR_FORWARDED_HOPS must be at least 0"),
        (
            0 <= settings.collector_telemetry_sample_rate <= 1,
            "NUDGE_COLLECTOR_TELEMETRY_SAMPLE_RATE must be between 0 and 1",
        ),
    ]
    wrong = [message for ok, message in problems if not ok]
    if wrong:
        raise ConfigError("; ".join(wrong))


class ReducedAccessLog(AbstractAccessLogger):
    """The collector's access log, reduced to what carries no personal data: method, route name (never the URL:
    no query string, no write key in a path), status, size and time. No client address, Referer or User-Agent.
    Written at DEBUG level only (`NUDGE_LOG_LEVEL=debug`): at info, requests are counted by `/metrics`, not
    logged."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.match_info.route.name if isinstance(request, web.Request) else None
        self.logger.debug(
            "%s %s %s %sB %.1fms", request.method, route or "other", response.status, response.body_length, time * 1000
        )


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
        log.exception("unexpected error answering %s %s", request.method, route)  # the route: no ids, no keys
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


async def telemetry(request: web.Request) -> web.Response:
    """`POST /v1/m`: analytics.js's own telemetry (counters of its API calls, every 30 s). Accepted and dropped:
    Nudge has no use for it, and answering 204 keeps the browser console clean. Not authenticated (analytics.js
    sends no key with it); rate-limited like any browser request; the body is read (bounded) and discarded."""
    collector = request.app[COLLECTOR_KEY]
    collector.admit(None, collector.client_address(request), 0, 1)
    await read_body_within(request, MAX_EVENT_BYTES, collector.settings.collector_body_timeout_s)
    return web.Response(status=204)


async def project_settings(request: web.Request) -> web.Response:
    """`GET /v1/projects/{writeKey}/settings`: the settings document analytics.js loads from its CDN, so the
    standard snippet works with `cdnURL` pointing at the collector (`engine.collector.analytics_js`). Only for
    browser write keys: a server key never belongs in a page (404, like an unknown key)."""
    collector = request.app[COLLECTOR_KEY]
    collector.admit(None, collector.client_address(request), 0, 1)
    write_key = request.match_info["write_key"]
    if collector.keys.kind(write_key) is not Auth.CLIENT:
        raise RequestRejected(404, "unknown_write_key", "no browser write key by that name")
    configured = collector.settings.collector_public_url
    protocol, host = public_base(configured, request.host, request.scheme)
    document = settings_document(write_key, protocol, host, collector.settings.collector_telemetry_sample_rate)
    # Derived from the Host header when no public URL is configured: then no shared cache may keep it.
    cache = "public, max-age=300" if configured else "no-store"
    return web.json_response(document, headers={"Cache-Control": cache})


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
    analytics.js's one-letter aliases (`/v1/b`, `/v1/t`, ...; CORS headers and `OPTIONS` preflight), its telemetry
    (`POST /v1/m`) and settings document (`GET /v1/projects/{writeKey}/settings`), the signed unsubscribe links
    (`GET`/`POST /v1/unsubscribe`, `engine.collector.unsubscribe`), `GET /healthz`,
    `GET /metrics`. Serve it with `access_log_class=ReducedAccessLog` (as `nudge collector` does). Connections
    open lazily and close on cleanup.
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
    app.router.add_post("/v1/m", telemetry, name="m")
    app.router.add_get("/v1/projects/{write_key}/settings", project_settings, name="settings")
    Unsubscribe(settings, app[COLLECTOR_KEY]).add_routes(app.router)  # GET/POST /v1/unsubscribe
    app.router.add_route("OPTIONS", "/v1/{path:.*}", preflight, name="preflight")
    register_regulations(app, settings, redis)  # POST/GET /v1/regulations and the privacy coordinator
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
