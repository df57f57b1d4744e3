"""A lead's marketing consent as its traits state it: the one reading shared by the core (which reports changes on
`lead-updates`) and the dispatcher (which checks it again when an action is finally sent)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONSENT_KEYS = ("marketing_consent", "consent", "marketingConsent")
_YES = ("1", "true", "yes", "y", "on")
_NO = ("0", "false", "no", "n", "off", "revoked", "denied", "withdrawn")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _YES
    return bool(value)


def _explicit_no(value: Any) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return value.strip().lower() in _NO
    return False


def consent_flag(traits: Mapping[str, Any]) -> bool | None:
    """Marketing consent when a trait states it explicitly (True/False), None when no trait says."""
    for key in CONSENT_KEYS:
        value = traits.get(key)
        if value is None:
            continue
        if isinstance(value, dict):  # e.g. {"marketing": true}
            value = value.get("marketing", value.get("email"))
            if value is None:
                continue
        return not _explicit_no(value)
    return None


def withdrawal_reason(traits: Mapping[str, Any]) -> str | None:
    """Why marketing may not go to this lead: `unsubscribed` (`traits.unsubscribed` truthy), `consent_withdrawn`
    (a consent trait explicitly false), or None."""
    if _truthy(traits.get("unsubscribed")):
        return "unsubscribed"
    if consent_flag(traits) is False:
        return "consent_withdrawn"
    return None
