"""Test helpers of the connector and dispatcher tests: `make_action`, an action with realistic defaults.

HTTP peers and topic readers are `engine.testing`'s; the dispatcher harness is tests/dispatch/rig.py."""

from __future__ import annotations

import itertools
import time
from typing import Any

from engine.core.model import Action, make_action_id

_ids = itertools.count()


def make_action(
    connector: str = "webhook",
    *,
    lead_id: str | None = None,
    rule: str = "cart_abandoned",
    context: dict[str, Any] | None = None,
    **fields: Any,
) -> Action:
    n = next(_ids)
    lead = lead_id or f"lead-{n}"
    base: dict[str, Any] = {
        "action_id": make_action_id(rule, "1", lead, f"t{n}-{time.time_ns()}"),
        "rule": rule,
        "rule_version": "1",
        "lead_id": lead,
        "fired_at_ms": int(time.time() * 1000),
        "trigger": (f"msg-{n}",),
        "connector": connector,
        "explanation": "cart of $120.00 idle for 30 min",
        "template": "cart_reminder",
        "context": context
        if context is not None
        else {
            "traits": {"email": f"{lead}@example.com", "name": "Ada Lovelace", "timezone": "UTC"},
            "cart": {
                "items": [
                    {"product_id": "p1", "name": "Walnut Desk", "price": 100.0, "quantity": 1},
                    {"product_id": "p2", "name": "Brass Lamp", "price": 10.0, "quantity": 2},
                ],
                "value": 120.0,
                "currency": "USD",
            },
        },
    }
    base.update(fields)
    return Action(**base)
