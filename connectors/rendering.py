"""Message templates: Jinja2 in its sandboxed environment, so a template can format facts but never run code."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from connectors.context import CartItem, LeadView
from engine.events import format_ts

BUILTIN_TEMPLATES = Path(__file__).resolve().parent / "templates"
_CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


# The files one template name stands for, per family (`Connector.template_family`).
TEMPLATE_FILES = {
    "email": ("email/{name}.subject.j2", "email/{name}.txt.j2", "email/{name}.html.j2"),
    "slack": ("slack/{name}.md.j2",),
}
DEFAULT_TEMPLATE = "default"


class TemplateProblem(Exception):
    """A template is missing or failed to render; the message names it. `reason`: `template_error`, or
    `unknown_template` for a name that has no template (`UnknownTemplate`)."""

    reason = "template_error"


class UnknownTemplate(TemplateProblem):
    """The action names a template that does not exist for its connector's type (a misspelt name): the action
    fails, rather than going out with the `default` text."""

    reason = "unknown_template"


def money(value: Any, currency: str = "USD") -> str:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return ""
    symbol = _CURRENCY_SYMBOLS.get(str(currency).upper())
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {currency}"


_MENTIONS = re.compile(r"^(<[@#!][A-Za-z0-9^|_-]+>\s*)+$")
# What a mail client or Slack turns into a link by itself: a scheme (`https://`, `javascript:`), and a dot that
# joins a name to a top-level domain (`evil.com`, `www.evil.example`). Defanged the way security reports write
# them (`hxxps`-style brackets), so the text stays readable but nothing is clickable.
_SCHEME = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]{1,20}):(?=//)|\b(javascript|vbscript|data|mailto|tel|sms|file|blob):"
)
_DOMAIN_DOT = re.compile(r"(?<=[A-Za-z0-9-])\.(?=[A-Za-z]{2,}\b)")
# Slack mrkdwn formatting characters, as look-alikes that Slack does not interpret (it has no escape for them).
_SLACK_FORMATTING = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"})


def neutralise_urls(text: str) -> str:
    """`text` with nothing a client would make clickable: `https://evil.com/x` → `https[:]//evil[.]com/x`,
    `javascript:alert(1)` → `javascript[:]alert(1)`. For text a lead provided (names, product names, pages)."""
    return _DOMAIN_DOT.sub("[.]", _SCHEME.sub(lambda m: f"{m.group(1) or m.group(2)}[:]", text))


def slack_clean(text: str) -> str:
    """Lead-provided text for Slack mrkdwn, before escaping: URLs neutralised (`neutralise_urls`) and the
    formatting characters `*`, `_`, `~` and backtick replaced by look-alikes Slack does not interpret (mrkdwn has
    no escape for them)."""
    return neutralise_urls(text).translate(_SLACK_FORMATTING)


def slack_plain(value: Any) -> str:
    """Lead-provided text as a Slack mrkdwn value: `slack_clean`, then `&`, `<`, `>` escaped. No link, mention
    (`<!channel>`) or formatting can come from the lead."""
    if value is None:
        return ""
    return slack_clean(str(value)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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


def _same(text: str) -> str:
    return text


def _clean_value(value: Any, clean: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {k: _clean_value(v, clean) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_value(v, clean) for v in value]
    return value


def template_vars(
    action: Any,
    extra: dict[str, Any] | None = None,
    *,
    clean: Callable[[str], str] | None = None,
    items: list[CartItem] | None = None,
) -> dict[str, Any]:
    """The one variable set all templates see (listed in docs/connectors.md): `lead`, `traits`, `cart`, `score`,
    `stage`, `rep`, `last_page`, `recent`, `action`, `payload`, `context`, plus `extra` (e.g. email's `brand`).

    `clean` is applied to every string the lead provided (its traits and names, cart item names, pages, recent
    events, the explanation and the raw `context`), e.g. `neutralise_urls`; `items` replaces the cart items
    (the email connector passes items whose links it checked)."""
    view = LeadView(action)
    rep = view.rep
    fix = clean or _same
    if items is None:
        items = view.cart_items
    if clean is not None:
        items = [dataclasses.replace(i, name=fix(i.name)) for i in items]

    def opt(text: str | None) -> str | None:
        return None if text is None else fix(text)

    return {
        "lead": {
            "id": view.lead_id,
            "email": view.email,
            "name": opt(view.name),
            "first_name": opt(view.first_name),
            "display_name": fix(view.display_name) if view.display_name != view.email else view.display_name,
            "company": opt(view.company),
            "title": opt(view.title),
        },
        "traits": _clean_value(view.traits, fix) if clean else view.traits,
        # A namespace, not a dict: `cart.items` in a template must be the list, not dict.items.
        "cart": SimpleNamespace(
            items=items, value=view.cart_value, currency=fix(view.currency), count=sum(i.quantity for i in items)
        ),
        "score": view.score,
        "stage": view.stage,
        "rep": rep,
        "last_page": opt(view.last_page),
        "recent": [fix(r) for r in view.recent],
        "action": {
            "id": action.action_id,
            "rule": action.rule,
            "explanation": fix(action.explanation),
            "fired_at": format_ts(action.fired_at_ms),
            "template": action.template,
            "marketing": action.marketing,
        },
        "payload": action.payload,
        "context": _clean_value(view.context, fix) if clean else view.context,
        **(extra or {}),
    }


def subject_vars(action: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The variables of a subject line written to the lead: only what the shop itself wrote (`payload` from the
    rule, `brand`, the rule's id and template) and the number of items in the cart, never a trait, a name or a
    product name a visitor could have typed. A template that asks for anything else (`lead.first_name`) gets
    nothing (an empty value)."""
    count = sum(i.quantity for i in LeadView(action).cart_items)
    return {
        "payload": action.payload,
        "action": {"rule": action.rule, "template": action.template, "marketing": action.marketing},
        "cart": SimpleNamespace(count=count),
        **(extra or {}),
    }


class Renderer:
    """Two sandboxed Jinja environments: mail with HTML autoescape, Slack with mrkdwn escaping.

    - Templates are looked up by name in the user's templates directory first (connectors file `templates_dir`),
      then in the built-in `connectors/templates/`. Email: `email/<name>.subject.j2`, `.txt.j2`, `.html.j2`; Slack:
      `slack/<name>.md.j2`. No name → `default`; a name without its files raises `UnknownTemplate` (never a
      silent fall back to `default`: a misspelt name would send the wrong text). `has_template` answers the same
      question without rendering.
    - HTML templates autoescape; Slack templates escape `&`, `<`, `>` in every `{{ }}` value (Slack mrkdwn), so
      lead data cannot inject markup or links. Undefined values render empty instead of failing.
    - A broken template raises `TemplateProblem` (the connector turns it into a permanent failure naming the
      template).
    """

    def __init__(self, user_dir: Path | None = None) -> None:
        self.dirs = [p for p in (user_dir, BUILTIN_TEMPLATES) if p is not None]
        dirs = [str(p) for p in self.dirs]
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

    def has_template(self, family: str, name: str | None) -> bool:
        """Does template `name` (None: `default`) exist for `family` (`email`: all three files, `slack`), in the
        user's directory or the built-in one? A name that would escape the template directories is not one."""
        return has_template(self.dirs, family, name)

    def _render(
        self, env: SandboxedEnvironment, family: str, name: str | None, index: int, variables: dict[str, Any]
    ) -> str:
        name = name or DEFAULT_TEMPLATE
        if not self.has_template(family, name):
            raise UnknownTemplate(f"no {family} template named {name!r} (looked in {', '.join(map(str, self.dirs))})")
        path = TEMPLATE_FILES[family][index].format(name=name)
        try:
            template = env.get_template(path)
            return template.render(variables).strip()
        except Exception as exc:  # a template can fail in many ways (TypeError too); none may crash a send
            raise TemplateProblem(f"template {path} failed: {type(exc).__name__}: {exc}") from exc

    def email(
        self, name: str | None, variables: dict[str, Any], subject_variables: dict[str, Any] | None = None
    ) -> tuple[str, str, str]:
        """Subject, text body and HTML body. The subject is rendered with `subject_variables` when given (the
        email connector passes `subject_vars` for mail to the lead)."""
        subject = self._render(
            self._mail, "email", name, 0, variables if subject_variables is None else subject_variables
        )
        text = self._render(self._mail, "email", name, 1, variables)
        html = self._render(self._mail, "email", name, 2, variables)
        return " ".join(subject.split()), text + "\n", html + "\n"  # the subject on one line, whatever the template did

    def slack(self, name: str | None, variables: dict[str, Any]) -> str:
        return self._render(self._slack, "slack", name, 0, variables)


_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def has_template(dirs: list[Path], family: str, name: str | None) -> bool:
    """Whether every file of template `name` (None: `default`) for `family` exists in one of `dirs` (each file
    may come from either: a user directory can override the subject alone)."""
    name = name or DEFAULT_TEMPLATE
    if family not in TEMPLATE_FILES or not _TEMPLATE_NAME.match(name) or ".." in name:
        return False
    return all(any((d / f.format(name=name)).is_file() for d in dirs) for f in TEMPLATE_FILES[family])
