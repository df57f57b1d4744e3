"""Server-rendered HTML of the reps' inbox and link pages: Jinja2 templates and the CSS/JS in `web/` (inlined in
each page under a per-response CSP nonce, so the pages need no static route and no third-party asset).

Every page is sent with `Cache-Control: no-store`, `Referrer-Policy: no-referrer` (a signed link in the address bar
never leaks through a Referer), a strict Content-Security-Policy and `X-Frame-Options: DENY`. Lead data is
autoescaped everywhere; times are shown in the rep's own time zone.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from engine.assignment.model import Assignment
from engine.assignment.notifications import lead_label
from engine.assignment.roster import Rep

WEB = Path(__file__).resolve().parent / "web"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(WEB)),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    undefined=jinja2.ChainableUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_CSS = (WEB / "inbox.css").read_text(encoding="utf-8")
_JS = (WEB / "inbox.js").read_text(encoding="utf-8")
MESSAGES = {
    "no_session": ("Sign in first", "Open the sign-in link you received (ask your Nudge admin for one)."),
    "bad_csrf": ("Please try again", "This form expired. Reload the page and try again."),
    "bad_token": ("Not allowed", "This page needs credentials."),
    "forged_link": ("This link is not valid", "It may be incomplete. Open your inbox instead."),
    "malformed_link": ("This link is not valid", "It may be incomplete. Open your inbox instead."),
    "expired_link": ("This link has expired", "Open your inbox to see your leads."),
    "not_found": ("Not found", "This lead is not in your inbox (it may have moved to another rep)."),
}


def _headers(nonce: str) -> dict[str, str]:
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def render(template: str, status: int = 200, **variables: Any) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    html = _ENV.get_template(template).render(nonce=nonce, css=_CSS, js=_JS, **variables)
    return web.Response(text=html, status=status, content_type="text/html", headers=_headers(nonce))


def error_page(request: web.Request, status: int, reason: str) -> web.Response:
    heading, text = MESSAGES.get(reason, ("Not allowed", "This page is not available."))
    return render("message.html.j2", status, heading=heading, text=text)


def _fmt(ms: int | None, tz: ZoneInfo) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%a %d %b %H:%M")


def _duration(ms: int) -> str:
    minutes = max(0, ms) // 60000
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _score(lead: Mapping[str, Any]) -> Any:
    score = lead.get("score")
    if isinstance(score, dict):
        score = score.get("value", score.get("score"))
    if isinstance(score, int | float) and not isinstance(score, bool):
        return f"{score:g}"
    return None


def _recent(lead: Mapping[str, Any]) -> list[str]:
    raw = lead.get("recent") or lead.get("recent_events") or []
    labels = []
    if isinstance(raw, list):
        for entry in raw[-6:]:
            label = entry.get("name") or entry.get("event") if isinstance(entry, dict) else entry
            if isinstance(label, str) and label.strip():
                labels.append(label.strip()[:120])
    return labels[::-1]  # newest first


def _last_page(lead: Mapping[str, Any]) -> str | None:
    page = lead.get("last_page")
    if isinstance(page, dict):
        page = page.get("url") or page.get("path") or page.get("name")
    return str(page)[:300] if isinstance(page, str | int) and str(page).strip() else None


def lead_href(lead_id: str) -> str:
    return "/inbox/leads/" + quote(lead_id, safe="")


def card(assignment: Assignment, lead: Mapping[str, Any], tz: ZoneInfo, now_ms: int) -> dict[str, Any]:
    """What a lead card shows: name, score, stage, why it fired, recent activity, SLA time left."""
    deadline = assignment.sla_deadline_ms
    explanation = lead.get("explanation")
    return {
        "lead_id": assignment.lead_id,
        "key": hashlib.blake2b(assignment.lead_id.encode(), digest_size=6).hexdigest(),
        "href": lead_href(assignment.lead_id),
        "label": lead_label(assignment.lead_id, lead),
        "score": _score(lead),
        "stage": lead.get("stage") if isinstance(lead.get("stage"), str) else None,
        "assigned_at": _fmt(assignment.assigned_at_ms, tz),
        "assigned_at_ms": assignment.assigned_at_ms,
        "acked": assignment.acked_at_ms is not None,
        "acked_at": _fmt(assignment.acked_at_ms, tz),
        "deadline_ms": deadline,
        "sla_left": (
            "SLA overdue" if deadline and deadline <= now_ms else f"{_duration((deadline or 0) - now_ms)} left"
        ),
        "waited": _duration(assignment.waited_ms) if assignment.waited_ms else None,
        "why": explanation if isinstance(explanation, str) and explanation else None,
        "recent": _recent(lead),
        "last_page": _last_page(lead),
    }


def inbox_order(cards: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first, then hottest (higher score) among leads assigned at the same time."""
    return sorted(cards, key=lambda c: (-c["assigned_at_ms"], -float(c["score"] or 0)))


def timeline(
    lead: Mapping[str, Any], history: list[dict[str, Any]], rep_names: Mapping[str, str], tz: ZoneInfo
) -> list[dict[str, str]]:
    """The lead's story, newest first: its recent events (with their times when known), the alert, and every
    assignment change (assigned, queued, acknowledged, passed, reassigned, released)."""
    entries: list[tuple[int, str, str]] = []
    recent = lead.get("recent") or lead.get("recent_events") or []
    if isinstance(recent, list):
        for event in recent[-20:]:
            if isinstance(event, dict):
                at = event.get("timestamp_ms") or event.get("at_ms") or event.get("ts") or 0
                name = event.get("name") or event.get("event") or event.get("type") or "event"
                page = event.get("url") or event.get("path") or ""
                entries.append((int(at) if isinstance(at, int | float) else 0, "event", f"{name} {page}".strip()))
            elif isinstance(event, str):
                entries.append((0, "event", event))
    alert = lead.get("alert")
    if isinstance(alert, dict) and isinstance(alert.get("fired_at_ms"), int):
        why = lead.get("explanation") if isinstance(lead.get("explanation"), str) else ""
        entries.append((alert["fired_at_ms"], "alert", f"{alert.get('rule', 'rule')} fired: {why}"))
    for item in history:
        kind = str(item.get("event", "change"))
        rep = rep_names.get(str(item.get("rep")), str(item.get("rep") or ""))
        text = {
            "assigned": f"assigned to {rep}",
            "reassigned": f"moved to {rep}",
            "acked": f"acknowledged by {rep}",
            "released": "released",
            "dequeued": "left the queue",
            "queued": "waiting for a free rep",
            "passed": f"passed by {rep}",
            "sla_extended": "SLA missed; nobody else free",
            "sla_exhausted": "SLA missed; no more automatic moves",
        }.get(kind, kind)
        if item.get("reason") and kind not in ("assigned", "acked"):
            text += f" ({item['reason']})"
        entries.append((int(item.get("at_ms") or 0), kind, text))
    entries.sort(key=lambda e: e[0], reverse=True)
    return [{"at": _fmt(at, tz) if at else "", "kind": kind, "text": text} for at, kind, text in entries]


def profile_rows(profile: Mapping[str, str], limit: int = 40) -> list[tuple[str, str]]:
    return [(k, str(v)[:500]) for k, v in sorted(profile.items())[:limit]]


def rep_zone(rep: Rep | None) -> ZoneInfo:
    return ZoneInfo(rep.timezone if rep else "UTC")
