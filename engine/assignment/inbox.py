"""The rep's inbox and the one-click links, served by `nudge reps serve` (aiohttp, server-rendered HTML).

Routes and their policies (`auth.Policy`):
- `GET /inbox/signin?rep&exp&sig` (signed): a valid sign-in link (`nudge reps link REP`) starts a session (cookie
  `nudge-rep-session`: HttpOnly, SameSite=Lax, Secure when NUDGE_REPS_PUBLIC_URL is https) and redirects to
  /inbox; forged or expired: 403 page.
- `GET /inbox` (session): the rep's open leads, newest first (then hottest): "waiting for you" (not acknowledged,
  with the SLA time left) and "acknowledged", each with score, stage, why it fired, recent events and last page,
  and acknowledge / pass / release buttons.
- `GET /inbox/leads/{id}` (session): one lead the rep owns, with the profile and the timeline; 404 page otherwise.
- `POST /inbox/leads/{id}/ack|pass|release` (session + CSRF): JSON for the page's script (`Accept:
  application/json`), a 303 back to /inbox for a plain form.
- `POST /inbox/signout` (session + CSRF).
- `GET /links/ack|pass?lead&rep&exp&sig` (signed): a confirmation page with one button; changes nothing (mail
  scanners and chat unfurlers fetch links). `POST` of the same fields does it; forged or expired: 403 page and
  nothing changes; the lead moved to someone else: 409 page.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.assignment.api import ASSIGNER_KEY, OPERATIONS_KEY, PROFILE_KEY
from engine.assignment.auth import AUTH_KEY, COOKIE, SESSION_KEY, Policy, declare, refuse, see_other, session_cookie
from engine.assignment.links import LinkError, RepLinks
from engine.assignment.pages import card, inbox_order, profile_rows, render, rep_zone, timeline

LINKS_KEY: web.AppKey[RepLinks] = web.AppKey("rep_links", RepLinks)
_DONE = {
    "ack": "Acknowledged: the SLA clock stopped.",
    "pass": "Passed on: the lead left your inbox.",
    "release": "Released: the lead left your inbox.",
}


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _link_refused(request: web.Request, error: LinkError) -> web.StreamResponse:
    return refuse(request, 403, f"{error.reason}_link")


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def signin(request: web.Request) -> web.StreamResponse:
    auth, links = request.app[AUTH_KEY], request.app[LINKS_KEY]
    try:
        link = links.verify(request.query, "signin")
    except LinkError as exc:
        return _link_refused(request, exc)
    if auth.roster.rep(link.rep_id) is None:
        return refuse(request, 403, "forged_link")  # a rep removed from the roster: same answer as a bad link
    token, _ = await auth.sessions.create(link.rep_id, request.app[ASSIGNER_KEY].now_ms())
    response = see_other("/inbox")
    session_cookie(response, auth, token, auth.sessions.ttl_s)
    return response


async def signout(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH_KEY]
    await auth.sessions.drop(request.cookies.get(COOKIE))
    response = render("message.html.j2", heading="Signed out", text="Open a sign-in link to come back.")
    response.del_cookie(COOKIE, path="/")
    return response


async def inbox(request: web.Request) -> web.StreamResponse:
    session = request[SESSION_KEY]
    assigner = request.app[ASSIGNER_KEY]
    rep = assigner.roster.rep(session.rep_id)
    tz, now_ms = rep_zone(rep), assigner.now_ms()
    cards = inbox_order(card(o.assignment, o.lead, tz, now_ms) for o in await assigner.leads_of(session.rep_id))
    flash = request.query.get("done")
    return render(
        "inbox.html.j2",
        rep=rep,
        csrf=session.csrf,
        waiting=[c for c in cards if not c["acked"]],
        acknowledged=[c for c in cards if c["acked"]],
        flash=_DONE.get(flash or ""),
    )


async def lead_page(request: web.Request) -> web.StreamResponse:
    session = request[SESSION_KEY]
    assigner = request.app[ASSIGNER_KEY]
    lead_id = request.match_info["lead_id"]
    owner = await assigner.owner(lead_id)
    rep = assigner.roster.rep(session.rep_id)
    if owner is None or owner.rep_id != session.rep_id:
        return render("message.html.j2", 404, rep=rep, csrf=session.csrf, heading="Not found",
                      text="This lead is not in your inbox (it may have moved to another rep).")  # fmt: skip
    tz, lead = rep_zone(rep), await assigner.lead_of(lead_id)
    raw = await assigner.store.redis.hgetall(PROFILE_KEY.format(lead=lead_id))
    profile = {_decode(k): _decode(v) for k, v in raw.items()}
    names = {r.id: r.name for r in assigner.roster.reps}
    return render(
        "lead.html.j2",
        rep=rep,
        csrf=session.csrf,
        item=card(owner, lead, tz, assigner.now_ms()),
        profile=profile_rows(profile),
        timeline=timeline(lead, await assigner.store.history(lead_id), names, tz),
    )


async def lead_action(request: web.Request) -> web.StreamResponse:
    session = request[SESSION_KEY]
    ops = request.app[OPERATIONS_KEY]
    lead_id, action = request.match_info["lead_id"], request.match_info["action"]
    if action == "ack":
        acked = await ops.ack(lead_id, session.rep_id, by="inbox")
        ok = acked.acked
    elif action == "pass":
        ok = (await ops.pass_lead(lead_id, session.rep_id, by="inbox")).status in ("moved", "queued")
    else:
        ok = (await ops.release(lead_id, session.rep_id, by="inbox")).status == "released"
    if _wants_json(request):
        if not ok:
            body = {"error": "not_owner", "message": "This lead is no longer yours."}
            return web.json_response(body, status=409, headers={"Cache-Control": "no-store"})
        body = {"ok": True, "message": _DONE[action]}
        if action != "ack":
            body["redirect"] = "/inbox?done=" + action
        return web.json_response(body, headers={"Cache-Control": "no-store"})
    return see_other(f"/inbox?done={action}" if ok else "/inbox")


async def _verified(request: web.Request, params: Any) -> Any:
    purpose = request.match_info["purpose"]
    return request.app[LINKS_KEY].verify({k: _decode(v) for k, v in params.items()}, purpose)


async def link_page(request: web.Request) -> web.StreamResponse:
    """GET of a one-click link: shows what it will do and one button; changes nothing."""
    try:
        link = await _verified(request, request.query)
    except LinkError as exc:
        return _link_refused(request, exc)
    assigner = request.app[ASSIGNER_KEY]
    owner = await assigner.owner(link.lead_id)
    if owner is None or owner.rep_id != link.rep_id:
        return render("link.html.j2", 409, heading="This lead is no longer yours",
                      text="It was reassigned or released; nothing to do.")  # fmt: skip
    rep = assigner.roster.rep(link.rep_id)
    item = card(owner, await assigner.lead_of(link.lead_id), rep_zone(rep), assigner.now_ms())
    verb = {"ack": "Acknowledge", "pass": "Pass"}[link.purpose]
    fields = [("lead", link.lead_id), ("rep", link.rep_id), ("exp", str(link.expires_s)),
              ("sig", request.query.get("sig", ""))]  # fmt: skip
    return render(
        "link.html.j2",
        heading=f"{verb} this lead?",
        item=item,
        text="Passing gives it to another rep." if link.purpose == "pass" else "",
        confirm={"action": request.path, "fields": fields, "label": verb},
    )


async def link_act(request: web.Request) -> web.StreamResponse:
    """POST of a one-click link: verify, then acknowledge or pass as the link's rep."""
    try:
        link = await _verified(request, await request.post())
    except LinkError as exc:
        return _link_refused(request, exc)
    ops = request.app[OPERATIONS_KEY]
    if link.purpose == "ack":
        result = await ops.ack(link.lead_id, link.rep_id, by="link")
        done, heading = result.acked, "Acknowledged"
        text = "The SLA clock stopped. The lead is yours." if done else ""
    else:
        passed = await ops.pass_lead(link.lead_id, link.rep_id, by="link")
        done, heading = passed.status in ("moved", "queued"), "Passed on"
        text = "Another rep gets it." if passed.status == "moved" else "It waits for the next free rep."
    if not done:
        return render("link.html.j2", 409, heading="This lead is no longer yours",
                      text="It was reassigned or released; nothing changed.")  # fmt: skip
    return render("link.html.j2", heading=heading, text=text)


def add_routes(app: web.Application, links: RepLinks) -> None:
    """Mount the inbox and link routes (see the module docstring); the app needs `auth.authenticate`, the
    `api.add_routes` keys (assigner, operations) and `auth.AUTH_KEY`."""
    app[LINKS_KEY] = links
    router = app.router
    declare(app, router.add_get("/inbox/signin", signin).resource, Policy.SIGNED)
    declare(app, router.add_post("/inbox/signout", signout).resource, Policy.SESSION)
    declare(app, router.add_get("/inbox", inbox).resource, Policy.SESSION)
    declare(app, router.add_get("/inbox/leads/{lead_id}", lead_page).resource, Policy.SESSION)
    declare(app, router.add_post("/inbox/leads/{lead_id}/{action:ack|pass|release}", lead_action).resource,
            Policy.SESSION)  # fmt: skip
    resource = router.add_resource("/links/{purpose:ack|pass}")
    resource.add_route("GET", link_page)
    resource.add_route("POST", link_act)
    declare(app, resource, Policy.SIGNED)

