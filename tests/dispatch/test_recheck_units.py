"""The send-time re-check and priority, without I/O: reading the worker's hand-over records, the decision on the
lead's current situation, the order in which due entries are handled, bounded metric labels, default caps."""

from __future__ import annotations

import orjson
import pytest

from engine.dispatch.config import parse_connectors
from engine.dispatch.outcomes import reason_label
from engine.dispatch.policies.recheck import (
    ConsentChange,
    Converted,
    LeadSituation,
    NotARecheckUpdate,
    expired,
    expires_at_of,
    parse_update,
    recheck_reason,
)
from engine.dispatch.schedule import ScheduledDelivery, in_priority_order
from tests.connectors.helpers import make_action

FIRED = 1_700_000_000_000


def test_parse_the_worker_hand_over_records() -> None:
    converted = {"kind": "converted", "lead_id": "L", "rule": "cart", "at_ms": 5, "event": "Order Completed",
                 "message_id": "m1"}  # fmt: skip
    assert parse_update(orjson.dumps(converted)) == Converted("L", "cart", 5)
    consent = {"kind": "consent", "lead_id": "L", "at_ms": 7, "marketing": False, "reason": "unsubscribed",
               "source": "unsubscribe"}  # fmt: skip
    assert parse_update(orjson.dumps(consent)) == ConsentChange("L", 7, False, "unsubscribed", "unsubscribe")
    given = {**consent, "marketing": True, "reason": "consent_given", "source": "identify"}
    assert parse_update(orjson.dumps(given)).marketing is True  # type: ignore[union-attr]
    odd = {**consent, "reason": "because"}  # an unknown withdrawal reason stays a withdrawal, with a known code
    assert parse_update(orjson.dumps(odd)) == ConsentChange("L", 7, False, "consent_withdrawn", "unsubscribe")
    keyed = {k: v for k, v in converted.items() if k != "lead_id"}
    assert parse_update(orjson.dumps(keyed), key=b"L2") == Converted("L2", "cart", 5)  # lead id from the key
    for value, reason in [
        (orjson.dumps({"kind": "assigned", "lead_id": "L"}), "other_kind"),
        (orjson.dumps({"kind": "stage", "lead_id": "L"}), "other_kind"),
        (b"not json", "invalid"),
        (orjson.dumps([1]), "invalid"),
        (orjson.dumps({**converted, "rule": ""}), "invalid"),
        (orjson.dumps({**converted, "at_ms": "5"}), "invalid"),
        (orjson.dumps({**consent, "marketing": "no"}), "invalid"),
        (None, "invalid"),
    ]:
        with pytest.raises(NotARecheckUpdate) as raised:
            parse_update(value)
        assert raised.value.reason == reason


NOW = LeadSituation()


@pytest.mark.parametrize(
    ("situation", "marketing", "obeys", "snapshot", "expected"),
    [
        (NOW, True, True, None, None),
        (LeadSituation(converted_at_ms=FIRED + 1), True, True, None, "converted"),
        (LeadSituation(converted_at_ms=FIRED + 1), False, False, None, "converted"),  # alerts too
        (LeadSituation(converted_at_ms=FIRED), True, True, None, None),  # not after it fired
        (LeadSituation(converted_at_ms=FIRED - 60_000), True, True, None, None),  # an earlier episode
        # consent withdrawn now, even though the snapshot (consent given when it fired) says nothing against it
        (LeadSituation(consent=ConsentChange("L", FIRED + 5, False, "unsubscribed")), True, True, None, "unsubscribed"),
        (LeadSituation(consent=ConsentChange("L", FIRED - 5, False, "consent_withdrawn")), True, True, None,
         "consent_withdrawn"),  # a withdrawal older than the action still holds: it is the current consent
        (LeadSituation(consent=ConsentChange("L", FIRED + 5, False, "unsubscribed")), False, True, None, None),
        (LeadSituation(consent=ConsentChange("L", FIRED + 5, False, "unsubscribed")), True, False, None, None),
        (LeadSituation(consent=ConsentChange("L", FIRED + 5, True, "consent_given")), True, True,
         "no_consent_recorded", None),  # an opt-in given later lifts the opt-in requirement
        (LeadSituation(consent=ConsentChange("L", FIRED + 5, True, "consent_given")), True, True, "unsubscribed",
         "unsubscribed"),  # but never an unsubscribe the action was fired under
        (NOW, True, True, "consent_withdrawn", "consent_withdrawn"),
    ],
)  # fmt: skip
def test_recheck_decides_on_the_current_situation(
    situation: LeadSituation, marketing: bool, obeys: bool, snapshot: str | None, expected: str | None
) -> None:
    action = make_action("email", lead_id="L", fired_at_ms=FIRED, marketing=marketing)
    assert recheck_reason(action, situation, obeys_consent=obeys, snapshot_reason=snapshot) == expected


def test_expiry_is_read_defensively() -> None:
    plain = make_action("email", fired_at_ms=FIRED)
    assert expires_at_of(plain) is None and not expired(plain, FIRED + 10**9)
    assert expires_at_of(plain, {"expires_at_ms": FIRED + 10}) == FIRED + 10  # the raw record's field
    assert expires_at_of(plain, {"expires_at_ms": True}) is None
    assert expired(plain, FIRED + 11, FIRED + 10) and not expired(plain, FIRED + 10, FIRED + 10)
    if hasattr(plain, "expires_at_ms"):  # once the core's Action carries it
        stamped = make_action("email", fired_at_ms=FIRED, expires_at_ms=FIRED + 5)
        assert expires_at_of(stamped) == FIRED + 5 and expired(stamped, FIRED + 6)


def test_scheduled_entries_keep_the_expiry_across_the_round_trip() -> None:
    entry = ScheduledDelivery(make_action("email"), 0, "deferred", "quiet_hours", 5, 1, expires_at_ms=99)
    assert ScheduledDelivery.from_bytes(entry.to_bytes()) == entry


def _entry(lead: str, priority: int, due: int = 100, rule: str = "r") -> ScheduledDelivery:
    return ScheduledDelivery(make_action("email", lead_id=lead, priority=priority, rule=rule), 0, "deferred",
                             "quiet_hours", due, 0)  # fmt: skip


def test_due_entries_are_handled_per_lead_highest_priority_first() -> None:
    a1, a9, a5 = _entry("A", 1), _entry("A", 9), _entry("A", 5)
    b0, b3_late = _entry("B", 0), _entry("B", 3, due=200)
    groups = in_priority_order([a1, b0, a9, b3_late, a5])
    assert groups == [[a9, a5, a1], [b3_late, b0]]
    same = [_entry("C", 2, due=300), _entry("C", 2, due=100)]
    assert [e.due_ms for e in in_priority_order(same)[0]] == [100, 300]  # equal priority: earliest due first


def test_reason_labels_stay_bounded() -> None:
    assert reason_label("") == ""
    assert reason_label("converted") == "converted" and reason_label("http_503") == "http_503"
    assert reason_label("gave up: HTTP 500 body") == "other"
    assert reason_label("x" * 60) == "other"


def test_email_connectors_get_a_per_recipient_cap_by_default() -> None:
    text = (
        "connectors:\n  shop: {type: email}\n  eu: {type: email}\n  hook: {type: webhook, url: 'http://x'}\n"
        "policies:\n  caps:\n    - {connector: eu, scope: recipient, max: 1, per: 1h}\n"
    )
    caps = parse_connectors(text, env={}).effective_caps()
    recipient = [(c.connector, c.max, c.per, c.marketing_only) for c in caps if c.scope == "recipient"]
    assert recipient == [("eu", 1, 3600.0, True), ("shop", 3, 86400.0, True)]  # marketing only: reps still get mail
    off = parse_connectors(text + "  default_recipient_cap: null\n", env={}).effective_caps()
    assert [c.connector for c in off if c.scope == "recipient"] == ["eu"]
    star = parse_connectors(
        "connectors:\n  shop: {type: email}\npolicies:\n  caps:\n    - {scope: recipient, max: 5, per: 1d}\n", env={}
    ).effective_caps()
    assert [(c.connector, c.max) for c in star] == [("*", 5)]
