"""Derived per-lead facts (cart, session/pages, time on page, first/last seen, source/campaign, traits) and the
lead view that conditions, `lead.` paths and action contexts read."""

from __future__ import annotations

import math
from typing import Any

from engine.events import Event

LeadView = dict[str, Any]

BIG_INT = 2**63  # orjson writes 64-bit integers only
SESSION_GAP_MS = 30 * 60 * 1000
TIME_ON_PAGE_CAP_MS = 30 * 60 * 1000
MAX_TRAITS = 30
MAX_TEXT = 120
MAX_CART_ITEMS = 10
RECENT = 5
MAX_LABEL = 40

_CART_ADD = "Product Added"
_CART_REMOVE = "Product Removed"
_ORDER_DONE = "Order Completed"


def finite_number(value: Any) -> float | None:
    """A JSON-safe number from a property value (numeric strings too), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if -BIG_INT < value < BIG_INT else float(value)  # state must stay orjson-serialisable
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None  # NaN would not survive a JSON round trip


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value)
    return text[:MAX_TEXT] if text else None


def _merge_traits(facts: dict[str, Any], traits: dict[str, Any]) -> None:
    kept = facts.setdefault("tr", {})
    for key, value in traits.items():
        if isinstance(value, dict | list):
            continue  # nested traits (address, ...) are not kept: state stays small and flat
        if isinstance(value, str):
            value = value[:MAX_TEXT]
        elif isinstance(value, int) and not isinstance(value, bool) and not -BIG_INT < value < BIG_INT:
            value = float(value)
        if key in kept or len(kept) < MAX_TRAITS:
            kept[key] = value


def _cart_key(props: dict[str, Any]) -> str | None:
    return _text(props.get("product_id")) or _text(props.get("sku")) or _text(props.get("name"))


def _apply_cart(facts: dict[str, Any], event: Event) -> None:
    props = event.properties
    if event.name == _ORDER_DONE:
        facts.pop("ct", None)
        return
    key = _cart_key(props)
    if key is None:
        return
    quantity = finite_number(props.get("quantity"))
    cart = facts.setdefault("ct", {})
    if event.name == _CART_ADD:
        line = cart.pop(key, None) or [None, None, 0]
        line[0] = _text(props.get("name")) or line[0]  # the latest name and price win (a price may change)
        price = finite_number(props.get("price"))
        line[1] = price if price is not None else line[1]
        line[2] = line[2] + (quantity if quantity is not None and quantity > 0 else 1)
        if props.get("url") or props.get("image_url"):
            line[3:] = [_text(props.get("url")), _text(props.get("image_url"))]
        cart[key] = line  # re-inserted last: the most recently touched line is evicted last
        while len(cart) > MAX_CART_ITEMS:
            del cart[next(iter(cart))]
        currency = _text(props.get("currency"))
        if currency:
            facts["cur"] = currency
    elif key in cart:
        line = cart[key]
        line[2] = line[2] - quantity if quantity is not None and quantity > 0 else 0
        if line[2] <= 0:
            del cart[key]
    if not cart:
        facts.pop("ct", None)


def _apply_session(facts: dict[str, Any], event: Event) -> None:
    ts = event.timestamp_ms
    last = facts.get("ls")  # the lead's latest event time before this one (apply_event updates it after)
    if last is None or ts - last > SESSION_GAP_MS:
        facts["ss"], facts["sp"] = ts, 0
        facts.pop("top", None)
        facts.pop("pt", None)
    if event.type != "page":
        return
    previous = facts.get("pt")
    if previous is not None and ts >= previous:
        facts["top"] = min(ts - previous, TIME_ON_PAGE_CAP_MS)
    facts["pt"] = ts
    facts["sp"] = facts.get("sp", 0) + 1
    props = event.properties
    facts["pg"] = [
        _text(props.get("path")),
        _text(event.name),
        _text(props.get("title")),
        _text(props.get("url")),
    ]


def _apply_source(facts: dict[str, Any], event: Event) -> None:
    if "src" in facts or "cmp" in facts:
        return
    campaign = event.context.get("campaign")
    campaign = campaign if isinstance(campaign, dict) else {}
    source = _text(campaign.get("source")) or _text(event.properties.get("utm_source"))
    name = _text(campaign.get("name")) or _text(event.properties.get("utm_campaign"))
    if source:
        facts["src"] = source
    if name:
        facts["cmp"] = name


def apply_event(facts: dict[str, Any], event: Event) -> None:
    """Update the compact facts dict in place with `event`. Runs before rules see the event, so matchers and
    `if:` see the lead *including* this event.

    - Bounded: at most `MAX_TRAITS` scalar traits of at most `MAX_TEXT` characters, `MAX_CART_ITEMS` cart lines,
      `RECENT` recent names.
    - Cart: `Product Added` adds `quantity` (default 1) of `product_id` (else `sku`, else `name`); `Product
      Removed` subtracts its quantity (no quantity: removes the line); `Order Completed` empties the cart.
    - Session: a gap of more than `SESSION_GAP_MS` of event time since the lead's last event starts a new
      session. Time on page is the gap between two page events in one session, capped at `TIME_ON_PAGE_CAP_MS`.
    - Source/campaign are first touch: `context.campaign.source|name`, else `properties.utm_source|utm_campaign`.
    """
    ts = event.timestamp_ms
    if event.traits:
        _merge_traits(facts, event.traits)
    if event.type == "track" and event.name in (_CART_ADD, _CART_REMOVE, _ORDER_DONE):
        _apply_cart(facts, event)
    _apply_session(facts, event)
    _apply_source(facts, event)
    if facts.get("fs") is None or ts < facts["fs"]:
        facts["fs"] = ts
    if facts.get("ls") is None or ts > facts["ls"]:
        facts["ls"] = ts
    label = event.name or event.type
    recent = facts.setdefault("rc", [])
    recent.append(label[:MAX_LABEL])
    del recent[:-RECENT]


def merge_facts(mine: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Identity merge: the known lead's facts win; the anonymous one fills gaps (cart, traits, first seen)."""
    merged = dict(other)
    merged.update(mine)
    if "fs" in other and "fs" in mine:
        merged["fs"] = min(mine["fs"], other["fs"])
    if "ls" in other and "ls" in mine:
        merged["ls"] = max(mine["ls"], other["ls"])
    traits = dict(other.get("tr") or {})
    traits.update(mine.get("tr") or {})
    if traits:
        merged["tr"] = dict(list(traits.items())[:MAX_TRAITS])
    cart = dict(other.get("ct") or {})
    cart.update(mine.get("ct") or {})
    if cart:
        merged["ct"] = dict(list(cart.items())[-MAX_CART_ITEMS:])
    for key in ("src", "cmp"):
        if key in other:  # first touch: the anonymous history is older
            merged[key] = other[key]
    return merged


def cart_view(facts: dict[str, Any]) -> dict[str, Any]:
    items = []
    value = 0.0
    count = 0
    for key, line in (facts.get("ct") or {}).items():
        name, price, quantity = line[0], line[1], line[2]
        item: dict[str, Any] = {"product_id": key, "name": name, "price": price, "quantity": quantity}
        if len(line) > 3:
            item["url"], item["image_url"] = line[3], line[4]
        items.append(item)
        count += quantity
        if price is not None:
            value += price * quantity
    return {"items": items, "value": round(value, 2), "count": count, "currency": facts.get("cur")}


def lead_view(
    lead_id: str,
    facts: dict[str, Any],
    scores: dict[str, float],
    stages: dict[str, str | None],
    primary: str | None,
    score_top: list[dict[str, Any]] | None = None,
) -> LeadView:
    """The readable lead: `lead_id, traits, cart{items[{product_id,name,price,quantity,url,image_url}], value,
    count, currency}, score, stage, scores{rule: value}, stages{rule: stage}, score_top[{message_id, matcher,
    points, now, at_ms}] (the primary score's top contributions, largest first), pages_in_session,
    session{started_at, pages}, time_on_page_ms (spent on the *previous* page: known only once the next page
    arrives), last_page{path,name,title,url}, first_seen, last_seen, source, campaign, recent[names]`. Shares no
    mutable part with `facts`: actions must not change when the state moves on."""
    page = facts.get("pg")
    return {
        "lead_id": lead_id,
        "traits": dict(facts.get("tr") or {}),  # a copy: actions must not change when the state moves on
        "cart": cart_view(facts),
        "score": scores.get(primary) if primary else None,
        "stage": stages.get(primary) if primary else None,
        "scores": scores,
        "stages": stages,
        "score_top": score_top or [],
        "pages_in_session": facts.get("sp", 0),
        "session": {"started_at": facts.get("ss"), "pages": facts.get("sp", 0)},
        "time_on_page_ms": facts.get("top"),
        "last_page": ({"path": page[0], "name": page[1], "title": page[2], "url": page[3]} if page else None),
        "first_seen": facts.get("fs"),
        "last_seen": facts.get("ls"),
        "source": facts.get("src"),
        "campaign": facts.get("cmp"),
        "recent": list(facts.get("rc") or ()),
    }
