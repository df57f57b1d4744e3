"""What the core tells the outbound side so a held action is re-checked when it is finally sent (issue 16):
`expires_at_ms` on every action, `converted` and `consent` records on `lead-updates`, and the firings a rule's own
gates stopped (`Evaluation.suppressed`, `nudge simulate --explain`)."""

from __future__ import annotations

from engine.core import Tick, evaluate
from engine.core.simulate import simulate
from engine.events import parse_event
from tests.core.helpers import at, identify, rules, track

RULES = rules(
    """
rules:
  - id: cart
    kind: absence
    when: {event: Product Added}
    unless: {event: Order Completed}
    within: 30m
    action: {connector: email, template: cart_reminder}
  - id: long_wait
    kind: absence
    when: {event: Trial Started}
    within: 3d
    action: {connector: email}
  - id: pricing
    kind: threshold
    match: {event: Pricing Viewed}
    count: 1
    within: 1h
    cooldown: 1h
    expires_after: 10m
    action: {connector: slack}
"""
)


def test_every_action_carries_when_it_expires() -> None:
    cart = evaluate(RULES, None, track("Product Added", 0)).state
    (reminder,) = evaluate(RULES, cart, Tick(at(31))).actions
    assert reminder.expires_at_ms == at(30) + 30 * 60_000  # an absence rule: its own `within`
    trial = evaluate(RULES, None, track("Trial Started", 0)).state
    (late,) = evaluate(RULES, trial, Tick(at(3 * 24 * 60 + 1))).actions
    assert late.expires_at_ms == late.fired_at_ms + 24 * 3_600_000  # ... capped at 24 h
    (alert,) = evaluate(RULES, None, track("Pricing Viewed", 0)).actions
    assert alert.expires_at_ms == at(10)  # `expires_after` as written
    assert type(alert).from_json(alert.to_bytes()) == alert


def test_an_event_matching_unless_is_reported_as_a_conversion_even_after_the_action_fired() -> None:
    state = evaluate(RULES, None, track("Product Added", 0)).state
    fired = evaluate(RULES, state, Tick(at(31)))
    assert fired.actions and fired.updates == []
    bought = evaluate(RULES, fired.state, track("Order Completed", 45, mid="o1"))
    assert bought.updates == [
        {
            "kind": "converted", "lead_id": "u1", "at_ms": at(45), "rule": "cart", "event": "Order Completed",
            "message_id": "o1",
        }
    ]


def test_consent_changes_are_reported_once_each_way() -> None:
    first = evaluate(RULES, None, identify(0, email="zoe@example.com"))
    assert first.updates == []
    withdrawn = evaluate(RULES, first.state, identify(1, marketing_consent=False))
    assert [(u["kind"], u["marketing"], u["reason"], u["source"]) for u in withdrawn.updates] == [
        ("consent", False, "consent_withdrawn", "identify")
    ]
    assert evaluate(RULES, withdrawn.state, identify(2, marketing_consent=False)).updates == []  # no change
    given = evaluate(RULES, withdrawn.state, identify(3, marketing_consent=True))
    assert [(u["marketing"], u["reason"]) for u in given.updates] == [(True, "consent_given")]
    unsubscribed = evaluate(RULES, given.state, track("Unsubscribed", 4))
    assert [(u["marketing"], u["reason"], u["source"]) for u in unsubscribed.updates] == [
        (False, "unsubscribed", "unsubscribe")
    ]
    assert unsubscribed.state.facts["tr"]["unsubscribed"] is True


def test_gated_firings_are_reported_with_their_reason() -> None:
    first = evaluate(RULES, None, track("Pricing Viewed", 0))
    again = evaluate(RULES, first.state, track("Pricing Viewed", 5))
    assert again.actions == [] and again.suppressed == [("pricing", "cooldown")]
    suppressed: list[tuple[int, str, str, str]] = []
    simulate(RULES, [track("Pricing Viewed", 0), track("Pricing Viewed", 5)], suppressed=suppressed)
    assert suppressed == [(at(5), "u1", "pricing", "cooldown")]


def test_an_unsubscribe_from_a_browser_does_not_withdraw_consent() -> None:
    """A browser can send any user id: its `Unsubscribed` must not unsubscribe someone else (the trusted one does)."""
    first = evaluate(RULES, None, identify(0, email="zoe@example.com"))
    spoofed = track("Unsubscribed", 1, mid="spoof")
    spoofed = parse_event({**spoofed.to_json(), "context": {"nudge": {"trusted": False}}})
    after = evaluate(RULES, first.state, spoofed)
    assert after.updates == [] and "unsubscribed" not in after.state.facts.get("tr", {})
