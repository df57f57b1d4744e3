"""The JSON API of the assignment subsystem under /v1 (aiohttp). Every route needs the bearer token
(`auth.Policy.BEARER`); errors are `{"error": "<code>", "detail": "<what to fix>"}` and never name other reps,
the roster or a lead's owner."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from engine.assignment.assigner import Assigner, UnknownRep
from engine.assignment.auth import Policy, declare
from engine.assignment.operations import RepOperations

ASSIGNER_KEY: web.AppKey[Assigner] = web.AppKey("assigner", Assigner)
OPERATIONS_KEY: web.AppKey[RepOperations] = web.AppKey("rep_operations", RepOperations)
PROFILE_KEY = "nudge:profile:{lead}"
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


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
    except orjson.JSONDecodeError:
        raise _BadBody(_error(400, "invalid_json", "the request body is not JSON")) from None
    if not isinstance(body, dict):
        raise _BadBody(_error(400, "invalid_body", 'send a JSON object, e.g. {"rep_id": "alice"}'))
    return body


async def _rep_id(request: web.Request, body: dict[str, Any]) -> str:
    rep_id = body.get("rep_id", request.query.get("rep_id"))
    if not isinstance(rep_id, str) or not rep_id:
        raise _BadBody(_error(400, "rep_id_required", 'send the acting rep, e.g. {"rep_id": "alice"}'))
    return rep_id


def _answers_bad_bodies(handler: Handler) -> Handler:
    """Turn a `_BadBody` raised while reading the request into its 400 response."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _BadBody as exc:
            return exc.response

    return wrapped


_NOT_OWNER = "this rep does not own the lead (it may have been reassigned)"


@_answers_bad_bodies
async def ack_lead(request: web.Request) -> web.Response:
    lead_id = request.match_info["lead_id"]
    rep_id = await _rep_id(request, await _body(request))
    result = await request.app[OPERATIONS_KEY].ack(lead_id, rep_id, by="api")
    if result.status == "unknown":
        return _error(404, "not_assigned", "the lead has no owner; nothing to acknowledge")
    if result.status == "not_owner":
        return _error(409, "not_owner", _NOT_OWNER)
    return _json({"lead_id": lead_id, "rep_id": rep_id, "acked": True, "already": result.status == "already"})


@_answers_bad_bodies
async def pass_lead(request: web.Request) -> web.Response:
    lead_id = request.match_info["lead_id"]
    rep_id = await _rep_id(request, await _body(request))
    result = await request.app[OPERATIONS_KEY].pass_lead(lead_id, rep_id, by="api")
    if result.status == "unknown":
        return _error(404, "not_assigned", "the lead has no owner; nothing to pass")
    if result.status == "not_owner":
        return _error(409, "not_owner", _NOT_OWNER)
    body: dict[str, Any] = {"lead_id": lead_id, "passed": True, "status": result.status}
    if result.queued is not None:
        body["queue_position"] = result.queued.position
    return _json(body)


@_answers_bad_bodies
async def release_lead(request: web.Request) -> web.Response:
    lead_id = request.match_info["lead_id"]
    rep_id = await _rep_id(request, await _body(request))
    result = await request.app[OPERATIONS_KEY].release(lead_id, rep_id, by="api")
    if result.status == "not_owner":
        return _error(409, "not_owner", _NOT_OWNER)
    if result.status != "released":
        return _error(404, "not_assigned", "the lead has no owner; nothing to release")
    return _json({"lead_id": lead_id, "released": True})


@_answers_bad_bodies
async def reassign_lead(request: web.Request) -> web.Response:
    lead_id = request.match_info["lead_id"]
    body = await _body(request)
    rep_id = await _rep_id(request, body)
    force = body.get("force") is True
    try:
        assignment, why = await request.app[OPERATIONS_KEY].reassign_to(lead_id, rep_id, by="api", force=force)
    except UnknownRep:
        return _error(404, "unknown_rep", "no such rep in the roster")
    if why == "unknown":
        return _error(404, "unknown_lead", "the lead is neither assigned nor waiting in the queue")
    if why in ("away", "full"):
        return _error(409, f"rep_{why}", 'the rep cannot take a lead now; send "force": true to assign anyway')
    if assignment is None:
        return _error(409, "changed", "the lead changed meanwhile; try again")
    return _json({"lead_id": lead_id, "rep_id": rep_id, "reassigned": why == "ok"})


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
        return _error(404, "unknown_rep", "no such rep in the roster")
    if available:
        await request.app[OPERATIONS_KEY].drain()
    return _json({"rep_id": rep_id, "available": available})


@_answers_bad_bodies
async def show_lead(request: web.Request) -> web.Response:
    assigner = request.app[ASSIGNER_KEY]
    lead_id = request.match_info["lead_id"]
    rep_id = await _rep_id(request, {})
    owner = await assigner.owner(lead_id)
    if owner is None or owner.rep_id != rep_id:  # one answer for "no owner" and "someone else's": no disclosure
        return _error(404, "not_found", "no lead with this id is owned by this rep")
    raw = await assigner.store.redis.hgetall(PROFILE_KEY.format(lead=lead_id))
    profile = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    history = await assigner.store.history(lead_id)
    return _json({"lead_id": lead_id, "owner": owner.to_json(), "history": history, "profile": profile})


def add_routes(app: web.Application, assigner: Assigner, operations: RepOperations) -> None:
    """Mount the /v1 routes (each declared `Policy.BEARER`; the app needs `auth.authenticate` as middleware):
    - `POST /v1/leads/{id}/ack` `{"rep_id"}` (required): the owner acknowledges, which stops the SLA clock. 200
      `{"lead_id", "rep_id", "acked": true, "already": bool}`; 404 no owner; 409 not the owner; 400 no rep_id.
    - `POST /v1/leads/{id}/pass` `{"rep_id"}`: the owner gives the lead to another rep (or back to the queue). 200
      `{"status": "moved"|"queued", "queue_position"?}`; 404; 409.
    - `POST /v1/leads/{id}/release` `{"rep_id"}`: the owner frees the lead (no new owner). 200; 404; 409.
    - `POST /v1/leads/{id}/reassign` `{"rep_id", "force"?}`: give the lead (owned or queued) to the named rep.
      200; 404 unknown rep or lead; 409 `rep_away` / `rep_full` (send `force: true`).
    - `PUT|POST /v1/reps/{id}/availability` `{"status": "away"|"available"}` or `{"available": bool}`: 200
      `{"rep_id", "available"}`; 404 unknown rep; 400 malformed body.
    - `GET /v1/leads/{id}?rep_id=`: owner, assignment history and the collector's profile hash, only for the rep
      who owns the lead (404 otherwise, the same answer whether the lead exists or not).
    """
    app[ASSIGNER_KEY] = assigner
    app[OPERATIONS_KEY] = operations
    routes = [
        ("POST", "/v1/leads/{lead_id}/ack", ack_lead),
        ("POST", "/v1/leads/{lead_id}/pass", pass_lead),
        ("POST", "/v1/leads/{lead_id}/release", release_lead),
        ("POST", "/v1/leads/{lead_id}/reassign", reassign_lead),
        ("PUT", "/v1/reps/{rep_id}/availability", set_availability),
        ("POST", "/v1/reps/{rep_id}/availability", set_availability),
        ("GET", "/v1/leads/{lead_id}", show_lead),
    ]
    for method, path, handler in routes:
        route = app.router.add_route(method, path, handler)
        declare(app, route.resource, Policy.BEARER)
