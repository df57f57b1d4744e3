"""Who may call what on `nudge reps serve`: every route declares one policy, and a middleware enforces it before the
handler runs. A route without a declared policy answers 401 (fail closed), so a new endpoint cannot be forgotten.

Policies:
- `BEARER`: the JSON API under /v1; `Authorization: Bearer <NUDGE_REPS_API_TOKEN>`, compared in constant time.
  No token configured: every /v1 request is refused (401), never let through.
- `SESSION`: the rep's inbox; a session cookie made by a signed sign-in link (`links.RepLinks`), kept in Redis.
  Requests that change something (POST) also need the session's CSRF token (form field `csrf` or header
  `X-CSRF-Token`). The rep must still be in the roster.
- `SIGNED`: the one-click links (/links/ack, /links/pass) and the sign-in link; the handler verifies the signature
  itself (403 page when forged or expired). Their GET changes nothing (link scanners prefetch URLs).
- `PUBLIC`: only /metrics and /healthz (no lead, rep or roster data), and only when they are served on the main
  port (`nudge reps serve` without `--metrics-port`).

Error bodies say what kind of credential is missing, never which leads, reps or owners exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from engine import metrics
from engine.assignment.links import DEV_PROFILES
from engine.assignment.roster import Roster
from engine.assignment.store import PREFIX
from engine.config import ConfigError, Settings

COOKIE = "nudge-rep-session"
MIN_TOKEN_BYTES = 32
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Policy(Enum):
    BEARER = "bearer"
    SESSION = "session"
    SIGNED = "signed"
    PUBLIC = "public"


POLICIES_KEY: web.AppKey[dict[str, Policy]] = web.AppKey("route_policies", dict)


def declare(app: web.Application, resource: web.AbstractResource, policy: Policy) -> None:
    """Record the policy of every method of `resource` (call right after adding its routes)."""
    app.setdefault(POLICIES_KEY, {})[resource.canonical] = policy


@dataclass(frozen=True)
class Session:
    rep_id: str
    csrf: str
    expires_ms: int


class ApiToken:
    """The bearer token of the /v1 API. An empty configured token accepts nothing."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def configured(self) -> bool:
        return bool(self._token)

    def accepts(self, authorization: str | None) -> bool:
        if not self._token or not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)


def api_token(settings: Settings) -> ApiToken:
    """NUDGE_REPS_API_TOKEN; outside the dev broker profile it must be set and at least 32 bytes (`ConfigError`).
    Under the dev profile an unset token leaves the /v1 API closed."""
    token = settings.reps_api_token
    if len(token.encode()) < MIN_TOKEN_BYTES and settings.broker_profile not in DEV_PROFILES:
        raise ConfigError(
            f"NUDGE_REPS_API_TOKEN must be at least {MIN_TOKEN_BYTES} bytes (every /v1 call of `nudge reps serve` "
            "sends it as a bearer token); generate one with `openssl rand -hex 32`"
        )
    return ApiToken(token)


class Sessions:
    """Inbox sessions in Redis (`<prefix>session:<sha256 of the cookie value>` → JSON, with a TTL): the cookie
    carries a random 256-bit token, Redis only its hash, so a Redis dump does not hand out sessions. `drop` ends a
    session (sign out). A session remembers the `key_id` of the link secret that signed its sign-in link: after the
    secret changes, every session is refused (that is how all sessions are ended at once)."""

    def __init__(self, redis: aioredis.Redis, ttl_s: float, prefix: str = PREFIX, key_id: str = "") -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.key_id = key_id

    def _key(self, token: str) -> str:
        return f"{self.prefix}session:{hashlib.sha256(token.encode()).hexdigest()}"

    async def create(self, rep_id: str, now_ms: int) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(rep_id, secrets.token_urlsafe(24), now_ms + int(self.ttl_s * 1000))
        value = orjson.dumps(
            {"rep": session.rep_id, "csrf": session.csrf, "expires_ms": session.expires_ms, "key": self.key_id}
        )
        await self.redis.set(self._key(token), value, px=max(1, int(self.ttl_s * 1000)))
        return token, session

    async def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        raw = await self.redis.get(self._key(token))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        if doc.get("key", "") != self.key_id:
            return None  # signed in under another link secret
        return Session(str(doc["rep"]), str(doc["csrf"]), int(doc["expires_ms"]))

    async def drop(self, token: str | None) -> None:
        if token:
            await self.redis.delete(self._key(token))


@dataclass
class RepsAuth:
    token: ApiToken
    sessions: Sessions
    roster: Roster
    secure_cookies: bool  # Secure flag on the session cookie (the public URL is https)


AUTH_KEY: web.AppKey[RepsAuth] = web.AppKey("reps_auth", RepsAuth)
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("rep_session", Session)


def see_other(location: str) -> web.Response:
    """A 303 redirect (returned, not raised, so the middleware and cookies apply)."""
    return web.Response(
        status=303, headers={"Location": location, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )


def _json_error(status: int, code: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="nudge-reps"'} if status == 401 else {}
    return web.Response(
        body=orjson.dumps({"error": code}), status=status, content_type="application/json", headers=headers
    )


def refuse(request: web.Request, status: int, reason: str) -> web.StreamResponse:
    """401/403 without data: JSON for API and script callers, a small page otherwise."""
    metrics.REPS_AUTH_FAILURES.labels(reason).inc()
    accept = request.headers.get("Accept", "")
    wants_json = request.path.startswith("/v1/") or ("application/json" in accept and "text/html" not in accept)
    if wants_json:
        return _json_error(status, "unauthorized" if status == 401 else "forbidden")
    from engine.assignment.pages import error_page  # the page renderer loads templates; only pages need it

    return error_page(request, status, reason)


def session_cookie(response: web.StreamResponse, auth: RepsAuth, token: str, max_age_s: float) -> None:
    response.set_cookie(
        COOKIE, token, max_age=int(max_age_s), path="/", httponly=True, samesite="Lax", secure=auth.secure_cookies
    )


async def current_session(request: web.Request) -> Session | None:
    auth = request.app[AUTH_KEY]
    session = await auth.sessions.get(request.cookies.get(COOKIE))
    if session is None or auth.roster.rep(session.rep_id) is None:
        return None
    return session


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the route's declared policy; see the module docstring. Unknown paths keep their 404/405."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or request.match_info.http_exception is not None:
        return await handler(request)
    policy = request.app.get(POLICIES_KEY, {}).get(resource.canonical)
    auth = request.app[AUTH_KEY]
    if policy in (Policy.PUBLIC, Policy.SIGNED):
        return await handler(request)
    if policy is Policy.BEARER:
        if not auth.token.accepts(request.headers.get("Authorization")):
            return refuse(request, 401, "bad_token")
        return await handler(request)
    if policy is Policy.SESSION:
        session = await current_session(request)
        if session is None:
            return refuse(request, 401, "no_session")
        if request.method not in ("GET", "HEAD"):
            given = request.headers.get("X-CSRF-Token")
            if given is None:
                form = await request.post()
                value: Any = form.get("csrf")
                given = value if isinstance(value, str) else None
            if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return refuse(request, 403, "bad_csrf")
        request[SESSION_KEY] = session
        return await handler(request)
    return refuse(request, 401, "bad_token")  # no declared policy: closed
