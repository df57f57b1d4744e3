"""HTTP endpoints of the assignment subsystem (aiohttp), to mount in any Nudge web server."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from engine.assignment.assigner import Assigner, UnknownRep

ASSIGNER_KEY: web.AppKey[Assigner] = web.AppKey("assigner", Assigner)
PROFILE_KEY = "nudge:profile:{lead}"
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, detail: str) -> web.Response:
    return _json({"error": code, "detail": detail}, status)


class _BadBody(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object sent, {} for an empty body; raises `_BadBody` with a 400 response otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _BadBody(_error(400, "invalid_json", f"request body is not JSON: {exc}")) from None
    if not isinstance(body, dict):
        raise _BadBody(_error(400, "invalid_body", 'send a JSON object, e.g. {"rep_id": "alice"}'))
    return body


def _answers_bad_bodies(handler: Handler) -> Handler:
    """Turn a `_BadBody` raised while reading the request into its 400 response."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _BadBody as exc:
            return exc.response

    return wrapped


@_answers_bad_bodies
async def ack_lead(request: web.Request) -> web.Response:
    assigner = request.app[ASSIGNER_KEY]
    lead_id = request.match_info["lead_id"]
    body = await _body(request)
    rep_id = body.get("rep_id") or request.query.get("rep_id")
    if rep_id is not None and not isinstance(rep_id, str):
        return _error(400, "invalid_rep_id", 'rep_id must be a string, e.g. {"rep_id": "alice"}')
    result = await assigner.ack_detail(lead_id, rep_id)
    if result.status == "unknown":
        return _error(404, "not_assigned", f"lead {lead_id!r} has no owner; nothing to acknowledge")
    if result.status == "not_owner":
        return _error(409, "not_owner", f"lead {lead_id!r} belongs to {result.owner!r}, not {rep_id!r}")
    return _json(
        {"lead_id": lead_id, "rep_id": result.owner, "acked": True, "already": result.status == "already"}
    )


@_answers_bad_bodies
async def set_availability(request: web.Request) -> web.Response:
    assigner = request.app[ASSIGNER_KEY]
    rep_id = request.match_info["rep_id"]
    body = await _body(request)
    available: bool | None = None
    if isinstance(body.get("available"), bool):
        available = body["available"]
    elif body.get("status") in ("away", "available"):
        available = body["status"] == "available"
    if available is None:
        return _error(400, "invalid_availability", 'send {"status": "away"} or {"status": "available"}')
    try:
        await assigner.set_availability(rep_id, available)
    except UnknownRep:
        return _error(
            404,
            "unknown_rep",
            f"no rep {rep_id!r} in the roster; known: {', '.join(assigner.roster.rep_ids)}",
        )
    return _json({"rep_id": rep_id, "available": available})


async def show_lead(request: web.Request) -> web.Response:
    assigner = request.app[ASSIGNER_KEY]
    lead_id = request.match_info["lead_id"]
    owner = await assigner.owner(lead_id)
    history = await assigner.store.history(lead_id)
    raw = await assigner.store.redis.hgetall(PROFILE_KEY.format(lead=lead_id))
    profile = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    if owner is None and not history and not profile:
        return _error(404, "unknown_lead", f"no owner, assignment history or profile for lead {lead_id!r}")
    return _json(
        {
            "lead_id": lead_id,
            "owner": owner.to_json() if owner else None,
            "history": history,
            "profile": profile,
        }
    )


def add_routes(app: web.Application, assigner: Assigner) -> None:
    """Mount the assignment routes on an existing application. JSON in and out; errors are `{"error":
    "<code>", "detail": "<what to fix>"}`:
    - `POST /v1/leads/{id}/ack` body `{"rep_id": "alice"}` (optional; also `?rep_id=`): the owner acknowledges the
      lead, which stops its SLA clock. 200 `{"lead_id", "rep_id", "acked": true, "already": bool}`; 404 the lead has
      no owner; 409 `rep_id` is not the current owner (e.g. the lead was reassigned); 400 malformed body.
    - `PUT|POST /v1/reps/{id}/availability` body `{"status": "away"|"available"}` or `{"available": bool}`: 200
      `{"rep_id", "available"}`; 404 unknown rep; 400 malformed body.
    - `GET /v1/leads/{id}`: owner (`Assignment.to_json()` or null), assignment history and the collector's profile
      hash `nudge:profile:{id}`; 404 when Nudge knows nothing about the lead.
    No authentication here: mount behind the same auth as the rest of the internal API (the routes change
    ownership).
    """
    app[ASSIGNER_KEY] = assigner
    app.router.add_post("/v1/leads/{lead_id}/ack", ack_lead)
    app.router.add_put("/v1/reps/{rep_id}/availability", set_availability)
    app.router.add_post("/v1/reps/{rep_id}/availability", set_availability)
    app.router.add_get("/v1/leads/{lead_id}", show_lead)


def create_app(assigner: Assigner) -> web.Application:
    """A standalone application with only the assignment routes (`add_routes`)."""
    app = web.Application()
    add_routes(app, assigner)
    return app
