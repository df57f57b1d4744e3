"""Message templates: Jinja2 in its sandboxed environment, so a template can format facts but never run code."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from connectors.context import LeadView
from engine.events import format_ts

BUILTIN_TEMPLATES = Path(__file__).resolve().parent / "templates"
_CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


class TemplateProblem(Exception):
    """A template is missing or failed to render; the message names it."""


def money(value: Any, currency: str = "USD") -> str:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return ""
    symbol = _CURRENCY_SYMBOLS.get(str(currency).upper())
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {currency}"


_MENTIONS = re.compile(r"^(<[@#!][A-Za-z0-9^|_-]+>\s*)+$")


def slack_escape(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup):  # built by the `mention`/`mentions` filters: already safe
        return str(value)
    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def mention(card: Any) -> Markup | str:
    """A rep card (`{name, slack_id}`) as a Slack mention when it has a Slack id, else the escaped name."""
    if isinstance(card, dict) or hasattr(card, "slack_id"):
        get = card.get if isinstance(card, dict) else lambda k: getattr(card, k, None)
        slack_id = get("slack_id")
        if isinstance(slack_id, str) and re.fullmatch(r"[A-Za-z0-9]+", slack_id):
            return Markup(f"<@{slack_id}>")
        return slack_escape(str(get("name") or get("email") or get("id") or ""))
    return slack_escape(str(card or ""))


def mentions(text: Any) -> Markup | str:
    """Pass through a string made only of Slack mentions (`<@U1> <@U2>`); escape anything else."""
    if isinstance(text, str) and _MENTIONS.match(text):
        return Markup(text)
    return slack_escape(text)


def template_vars(action: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one variable set all templates see (listed in docs/connectors.md): `lead`, `traits`, `cart`, `score`,
    `stage`, `rep`, `last_page`, `recent`, `action`, `payload`, `context`, plus `extra` (e.g. email's `brand`)."""
    view = LeadView(action)
    rep = view.rep
    items = view.cart_items
    return {
        "lead": {
            "id": view.lead_id,
            "email": view.email,
            "name": view.name,
            "first_name": view.first_name,
            "display_name": view.display_name,
            "company": view.company,
            "title": view.title,
        },
        "traits": view.traits,
        # A namespace, not a dict: `cart.items` in a template must be the list, not dict.items.
        "cart": SimpleNamespace(
            items=items, value=view.cart_value, currency=view.currency, count=sum(i.quantity for i in items)
        ),
        "score": view.score,
        "stage": view.stage,
        "rep": rep,
        "last_page": view.last_page,
        "recent": view.recent,
        "action": {
            "id": action.action_id,
            "rule": action.rule,
            "explanation": action.explanation,
            "fired_at": format_ts(action.fired_at_ms),
            "template": action.template,
            "marketing": action.marketing,
        },
        "payload": action.payload,
        "context": view.context,
        **(extra or {}),
    }


class Renderer:
    """Two sandboxed Jinja environments: mail with HTML autoescape, Slack with mrkdwn escaping.

    - Templates are looked up by name in the user's templates directory first (connectors file `templates_dir`),
      then in the built-in `connectors/templates/`. Email: `email/<name>.subject.j2`, `.txt.j2`, `.html.j2`; Slack:
      `slack/<name>.md.j2`. A missing name falls back to `default`.
    - HTML templates autoescape; Slack templates escape `&`, `<`, `>` in every `{{ }}` value (Slack mrkdwn), so
      lead data cannot inject markup or links. Undefined values render empty instead of failing.
    - A broken template raises `TemplateProblem` (the connector turns it into a permanent failure naming the
      template).
    """

    def __init__(self, user_dir: Path | None = None) -> None:
        dirs = [str(p) for p in (user_dir, BUILTIN_TEMPLATES) if p is not None]
        loader = jinja2.FileSystemLoader(dirs)
        common: dict[str, Any] = {
            "loader": loader,
            "undefined": jinja2.ChainableUndefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
        }
        self._mail = SandboxedEnvironment(autoescape=jinja2.select_autoescape(["html.j2"]), **common)
        self._slack = SandboxedEnvironment(autoescape=False, finalize=slack_escape, **common)
        for env in (self._mail, self._slack):
            env.filters["money"] = money
        self._slack.filters["mention"] = mention
        self._slack.filters["mentions"] = mentions

    def _render(self, env: SandboxedEnvironment, names: list[str], variables: dict[str, Any]) -> str:
        try:
            template = env.select_template(names)
        except jinja2.TemplatesNotFound as exc:
            raise TemplateProblem(f"no template found (looked for {', '.join(names)})") from exc
        try:
            return template.render(variables).strip()
        except Exception as exc:  # a template can fail in many ways (TypeError too); none may crash a send
            raise TemplateProblem(f"template {template.name} failed: {type(exc).__name__}: {exc}") from exc

    def email(self, name: str | None, variables: dict[str, Any]) -> tuple[str, str, str]:
        """Subject, text body and HTML body."""
        parts = []
        for suffix in ("subject", "txt", "html"):
            names = [f"email/{n}.{suffix}.j2" for n in (name, "default") if n]
            parts.append(self._render(self._mail, names, variables))
        subject = " ".join(parts[0].split())  # one line, whatever the template did
        return subject, parts[1] + "\n", parts[2] + "\n"

    def slack(self, name: str | None, variables: dict[str, Any]) -> str:
        return self._render(self._slack, [f"slack/{n}.md.j2" for n in (name, "default") if n], variables)
