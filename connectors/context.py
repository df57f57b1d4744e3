"""A defensive view of `Action.context` (the lead facts the rule engine attaches to an action).

The core decides the shape of `context`; this module is the one place the outbound side reads it, so a missing
or oddly-typed field gives a sensible default instead of an exception. Contract: every accessor returns a
value of the annotated type, never raises, and never invents facts (unknown → `None` / empty).

Fields read (all optional): `traits` {email (the trusted address; `traits.unverified` is never read), name,
first_name, last_name, timezone, unsubscribed, consent, marketing_consent, company, title, phone}, `cart`
{items: [{product_id, name, price, quantity, url, image_url}], value, currency, url}, `score`, `stage`, `owner` /
`rep` (a name, or {name, email, slack_id}), `last_page`, `recent` (list of recent event names or {name, timestamp}
objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.model import Action


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def _falsy_flag(value: Any) -> bool:
    """True only when a consent flag is explicitly "no" (False, 0, "false", "no", "revoked", ...)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return value.strip().lower() in ("0", "false", "no", "n", "off", "revoked", "denied", "withdrawn")
    return False


@dataclass(frozen=True)
class CartItem:
    """One cart line; `price` None when the event had none (templates then print nothing)."""

    product_id: str | None
    name: str
    price: float | None
    quantity: int
    url: str | None
    image_url: str | None

    @property
    def line_total(self) -> float | None:
        return None if self.price is None else round(self.price * self.quantity, 2)


@dataclass(frozen=True)
class Rep:
    """The lead's owner as far as known; at least one field is set."""

    name: str | None
    email: str | None
    slack_id: str | None


class LeadView:
    """Read-only, typed access to an action's lead facts."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self.context = _dict(action.context)
        self.traits = _dict(self.context.get("traits"))

    @property
    def lead_id(self) -> str:
        return self.action.lead_id

    @property
    def email(self) -> str | None:
        """`traits.email` and nothing else: the collector keeps an address a browser sent under
        `traits.unverified`, which is never read here, so mail goes only to an address the shop's back end
        stated (or a signed-in user proved)."""
        email = _str(self.traits.get("email"))
        return email if email and "@" in email else None

    @property
    def first_name(self) -> str | None:
        first = _str(self.traits.get("first_name")) or _str(self.traits.get("firstName"))
        if first:
            return first
        name = self.name
        return name.split()[0] if name else None

    @property
    def name(self) -> str | None:
        name = _str(self.traits.get("name"))
        if name:
            return name
        parts = [_str(self.traits.get(k)) for k in ("first_name", "firstName", "last_name", "lastName")]
        joined = " ".join(p for p in parts if p)
        return joined or None

    @property
    def display_name(self) -> str:
        return self.name or self.email or self.lead_id

    @property
    def company(self) -> str | None:
        company = self.traits.get("company")
        if isinstance(company, dict):
            return _str(company.get("name"))
        return _str(company)

    @property
    def title(self) -> str | None:
        return _str(self.traits.get("title"))

    @property
    def timezone(self) -> str | None:
        return _str(self.traits.get("timezone")) or _str(self.context.get("timezone"))

    @property
    def unsubscribed(self) -> bool:
        return _truthy(self.traits.get("unsubscribed"))

    def consent(self) -> bool | None:
        """Marketing consent: True/False when a trait says so explicitly, None when unknown."""
        for key in ("marketing_consent", "consent", "marketingConsent"):
            if key in self.traits and self.traits[key] is not None:
                value = self.traits[key]
                if isinstance(value, dict):  # e.g. {"marketing": true}
                    value = value.get("marketing", value.get("email"))
                    if value is None:
                        continue
                return not _falsy_flag(value)
        return None

    @property
    def score(self) -> float | None:
        score = self.context.get("score")
        if isinstance(score, dict):
            score = score.get("value", score.get("score"))
        return _num(score)

    @property
    def stage(self) -> str | None:
        return _str(self.context.get("stage"))

    @property
    def rep(self) -> Rep | None:
        raw = self.context.get("owner", self.context.get("rep"))
        if isinstance(raw, dict):
            rep = Rep(_str(raw.get("name")), _str(raw.get("email")), _str(raw.get("slack_id")))
            return rep if (rep.name or rep.email or rep.slack_id) else None
        name = _str(raw)
        return Rep(name, None, None) if name else None

    @property
    def last_page(self) -> str | None:
        page = self.context.get("last_page")
        if isinstance(page, dict):
            return _str(page.get("url")) or _str(page.get("path")) or _str(page.get("name"))
        return _str(page)

    @property
    def recent(self) -> list[str]:
        """Recent activity as short labels (event names), newest last; at most 10."""
        raw = self.context.get("recent") or self.context.get("recent_events") or []
        labels: list[str] = []
        if isinstance(raw, list):
            for item in raw[-10:]:
                label = _str(item.get("name") or item.get("event")) if isinstance(item, dict) else _str(item)
                if label:
                    labels.append(label)
        return labels

    @property
    def cart(self) -> dict[str, Any]:
        return _dict(self.context.get("cart"))

    @property
    def cart_items(self) -> list[CartItem]:
        items = self.cart.get("items") or self.cart.get("products") or []
        out: list[CartItem] = []
        if not isinstance(items, list):
            return out
        for raw in items:
            if not isinstance(raw, dict):
                continue
            quantity = _num(raw.get("quantity"))
            out.append(
                CartItem(
                    product_id=_str(raw.get("product_id") or raw.get("sku")),
                    name=_str(raw.get("name")) or _str(raw.get("product_id")) or "item",
                    price=_num(raw.get("price")),
                    quantity=int(quantity) if quantity and quantity > 0 else 1,
                    url=_str(raw.get("url")),
                    image_url=_str(raw.get("image_url")),
                )
            )
        return out

    @property
    def cart_value(self) -> float | None:
        value = _num(self.cart.get("value"))
        if value is not None:
            return value
        totals = [item.line_total for item in self.cart_items]
        return round(sum(t for t in totals if t is not None), 2) if totals else None

    @property
    def currency(self) -> str:
        return _str(self.cart.get("currency")) or _str(self.context.get("currency")) or "USD"
