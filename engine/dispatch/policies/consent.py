"""Consent: a lead who unsubscribed or withdrew marketing consent gets no marketing message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from connectors.context import LeadView


class ConsentConfig(BaseModel):
    """`policies.consent`: which connectors obey consent, and whether consent must be explicit."""

    model_config = ConfigDict(extra="forbid")

    connectors: list[str] | None = Field(
        None,
        description="connector names whose marketing actions obey consent; default: every email connector",
    )
    require_explicit: bool = Field(
        False, description="opt-in: no recorded consent means no marketing message"
    )


def consent_block_reason(view: LeadView, require_explicit: bool = False) -> str | None:
    """The suppression reason for this action, or None when it may go; pure.

    Only marketing actions are checked (`Action.marketing`; a sales alert to a rep is not a message to the lead);
    the dispatcher decides which connectors obey consent (by default the `email` kind, see `ConsentConfig`).
    `traits.unsubscribed` truthy → `unsubscribed`; `traits.marketing_consent` / `traits.consent` explicitly false
    ("no", 0, "revoked", ...) → `consent_withdrawn`; no consent trait at all → allowed, unless `require_explicit`
    (opt-in regimes) → `no_consent_recorded`.
    """
    if not view.action.marketing:
        return None
    if view.unsubscribed:
        return "unsubscribed"
    consent = view.consent()
    if consent is False:
        return "consent_withdrawn"
    if consent is None and require_explicit:
        return "no_consent_recorded"
    return None
