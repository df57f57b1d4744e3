"""Small builders for core tests: events at minute offsets, a rule set from YAML text, run a stream."""

from __future__ import annotations

from typing import Any

from engine.core import Action, LeadState, RuleSet, Tick, evaluate
from engine.events import Event, parse_event
from engine.language import parse_rules

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
MIN = 60_000


def at(minutes: float) -> int:
    return T0 + int(minutes * MIN)


def track(event: str, minute: float, lead: str = "u1", mid: str | None = None, **props: Any) -> Event:
    doc: dict[str, Any] = {
        "type": "track",
        "event": event,
        "userId": lead,
        "timestamp": at(minute),
        "properties": props,
    }
    doc["messageId"] = mid or f"{event[:3].lower()}-{minute:g}-{lead}"
    return parse_event(doc)


def page(path: str, minute: float, lead: str = "u1", mid: str | None = None, **extra: Any) -> Event:
    doc: dict[str, Any] = {"type": "page", "name": path, "userId": lead, "timestamp": at(minute)}
    doc["properties"] = {"path": path, **extra.pop("properties", {})}
    doc["messageId"] = mid or f"page-{minute:g}-{lead}"
    doc.update(extra)
    return parse_event(doc)


def identify(minute: float, lead: str = "u1", **traits: Any) -> Event:
    doc = {
        "type": "identify",
        "userId": lead,
        "timestamp": at(minute),
        "traits": traits,
        "messageId": f"id-{minute:g}",
    }
    return parse_event(doc)


def rules(body: str) -> RuleSet:
    return parse_rules(body)


CART = parse_rules(
    """
rules:
  - id: cart
    kind: absence
    when: {event: Product Added}
    unless: {event: Order Completed}
    within: 30m
    action: {connector: email, template: cart_reminder, payload: {subject: Hi}}
    priority: 4
    on_cap: drop
"""
)


def run(ruleset: RuleSet, items: list[Event | Tick], state: LeadState | None = None) -> tuple[LeadState, list[Action]]:
    actions: list[Action] = []
    for item in items:
        result = evaluate(ruleset, state, item)
        state = result.state
        actions.extend(result.actions)
    assert state is not None
    return state, actions
