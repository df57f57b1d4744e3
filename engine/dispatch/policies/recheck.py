"""The re-check at send time: has the action expired, has its lead converted since it fired, has its lead withdrawn
marketing consent since? Decided on the lead's current situation, not on the snapshot the action carries.

The worker knows the events; the dispatcher holds the actions. The worker reports what matters on `lead-updates`
(`kind: converted`: an event matched a rule's `unless` / a journey's `exit_on`; `kind: consent`: marketing consent
changed), the dispatcher folds those records into one small Redis hash per lead (`RecheckState`), and reads it
with one round trip when an action is about to be sent. The worker never waits for the dispatcher, and the
dispatcher never asks the worker anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from engine.core.model import Action
from engine.dispatch.policies.caps import PositiveSeconds

CONSENT_REASONS = frozenset({"unsubscribed", "consent_withdrawn"})
_CONSENT_FIELD = "consent"
_CONVERTED_PREFIX = "c:"


class RecheckConfig(BaseModel):
    """`policies.recheck`: how long the per-lead re-check state is kept."""

    model_config = ConfigDict(extra="forbid")

    state_ttl_s: PositiveSeconds = Field(
        30 * 86400.0,
        description="how long a lead's conversion and consent state lives after its last change; longer than "
        "any action waits in the schedule",
    )


@dataclass(frozen=True)
class Converted:
    """`{"kind": "converted", "lead_id", "rule", "at_ms", ...}`: the lead did `rule`'s `unless`/`exit_on` event
    at `at_ms` (event time)."""

    lead_id: str
    rule: str
    at_ms: int


@dataclass(frozen=True)
class ConsentChange:
    """`{"kind": "consent", "lead_id", "at_ms", "marketing", "reason", "source"}`: the lead's marketing consent as
    of `at_ms` (event time); `reason` is `unsubscribed`, `consent_withdrawn` or `consent_given`."""

    lead_id: str
    at_ms: int
    marketing: bool
    reason: str
    source: str = ""


LeadUpdate = Converted | ConsentChange


class NotARecheckUpdate(ValueError):
    """A `lead-updates` record the re-check ignores (`reason`: `other_kind`) or cannot read (`invalid`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_update(value: bytes | None, key: bytes | None = None) -> LeadUpdate:
    """A `converted` or `consent` record of `lead-updates`; raises `NotARecheckUpdate` for any other kind
    (stage changes, assignments: reason `other_kind`) and for a record it cannot read (`invalid`). The lead id
    comes from the value, else from the record key."""
    try:
        doc: Any = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise NotARecheckUpdate("invalid") from None
    if not isinstance(doc, dict):
        raise NotARecheckUpdate("invalid")
    kind = doc.get("kind")
    if kind not in ("converted", "consent"):
        raise NotARecheckUpdate("other_kind")
    lead = doc.get("lead_id") or (key.decode("utf-8", "replace") if key else "")
    at_ms = doc.get("at_ms")
    if not isinstance(lead, str) or not lead or isinstance(at_ms, bool) or not isinstance(at_ms, int):
        raise NotARecheckUpdate("invalid")
    if kind == "converted":
        rule = doc.get("rule")
        if not isinstance(rule, str) or not rule:
            raise NotARecheckUpdate("invalid")
        return Converted(lead, rule, at_ms)
    marketing = doc.get("marketing")
    if not isinstance(marketing, bool):
        raise NotARecheckUpdate("invalid")
    reason = doc.get("reason")
    if marketing:
        reason = "consent_given"
    elif reason not in CONSENT_REASONS:
        reason = "consent_withdrawn"
    return ConsentChange(lead, at_ms, marketing, str(reason), str(doc.get("source") or ""))


@dataclass(frozen=True)
class LeadSituation:
    """What the dispatcher knows now about one lead, for one rule: when the lead last converted for that rule
    (event time, None: never, or not within the state's TTL) and its latest consent change (None: none seen)."""

    converted_at_ms: int | None = None
    consent: ConsentChange | None = None


# Newer wins (event time); an equal time keeps the later record. One Lua call per record, so two dispatchers
# applying records of one lead in any order converge on the same state.
_APPLY_CONVERTED = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_APPLY_CONSENT = """
local current = redis.call('HGET', KEYS[1], 'consent')
local changed = 0
if (not current) or tonumber(string.match(current, '^(%d+)')) <= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'consent', ARGV[2])
  changed = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return changed
"""


class RecheckState:
    """Per-lead re-check state in Redis: a hash `<prefix>recheck:<lead id>` with `c:<rule>` → the latest
    conversion time for that rule and `consent` → `"<at_ms>|<0|1>|<reason>"`, expiring `state_ttl_s` after its
    last change.

    - `apply(update)` folds one `lead-updates` record in (one Lua call; idempotent; newer event time wins, so
      replaying the topic from the beginning or applying records out of order gives the same state). Returns
      False when a consent record was older than the state's and changed nothing.
    - `situation(lead, rule)` is the one round trip of the send-time check (`HMGET`).
    Redis errors propagate (the dispatcher retries).
    """

    def __init__(self, redis: Redis, prefix: str, config: RecheckConfig | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = int((config or RecheckConfig()).state_ttl_s * 1000)
        self._converted = redis.register_script(_APPLY_CONVERTED)
        self._consent = redis.register_script(_APPLY_CONSENT)

    def key(self, lead_id: str) -> str:
        return f"{self.prefix}recheck:{lead_id}"

    async def apply(self, update: LeadUpdate) -> bool:
        key = self.key(update.lead_id)
        if isinstance(update, Converted):
            args: list[object] = [f"{_CONVERTED_PREFIX}{update.rule}", update.at_ms, self.ttl_ms]
            return bool(await self._converted(keys=[key], args=args))
        encoded = f"{update.at_ms}|{1 if update.marketing else 0}|{update.reason}"
        return bool(await self._consent(keys=[key], args=[update.at_ms, encoded, self.ttl_ms]))

    async def situation(self, lead_id: str, rule: str) -> LeadSituation:
        converted, consent = await self.redis.hmget(
            self.key(lead_id), [f"{_CONVERTED_PREFIX}{rule}", _CONSENT_FIELD]
        )
        return LeadSituation(
            int(converted) if converted is not None else None,
            _decode_consent(lead_id, consent) if consent is not None else None,
        )


def _decode_consent(lead_id: str, raw: bytes | str) -> ConsentChange | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    at, _, rest = text.partition("|")
    flag, _, reason = rest.partition("|")
    try:
        return ConsentChange(lead_id, int(at), flag == "1", reason)
    except ValueError:
        return None


def expired(action: Action, now_ms: int, expires_at_ms: int | None = None) -> bool:
    """Past its `expires_at_ms` (the worker sets fired_at + the rule's `expires_after`; None: never expires)."""
    limit = expires_at_ms if expires_at_ms is not None else expires_at_of(action)
    return limit is not None and now_ms > limit


def expires_at_of(action: Action, doc: dict[str, Any] | None = None) -> int | None:
    """The action's `expires_at_ms`, read defensively: the `Action` field when the core has it, else the raw
    record's field, else None."""
    value = getattr(action, "expires_at_ms", None)
    if value is None and doc is not None:
        value = doc.get("expires_at_ms")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def recheck_reason(
    action: Action,
    situation: LeadSituation,
    *,
    obeys_consent: bool,
    snapshot_reason: str | None,
) -> str | None:
    """Why `action` must not be sent now, from the lead's current situation; None when it may go on. Pure.

    1. `converted`: the lead converted for the action's rule after the action fired (conversion time >
       `fired_at_ms`, both event time). Applies to every action, marketing or not.
    2. Consent, for marketing actions on connectors that obey it: a withdrawal the dispatcher has seen
       (`unsubscribed` / `consent_withdrawn`) blocks whatever the snapshot said when the action fired, and
       whenever it happened (the latest consent change is the current consent). Otherwise the snapshot's own
       verdict (`snapshot_reason`, from the traits copied at fire time) stands, except that a later explicit
       `consent_given` lifts `no_consent_recorded` (opt-in regimes). A consent given later never lifts an
       unsubscribe the snapshot shows: an action fired while the lead was unsubscribed stays unsent.
    """
    if situation.converted_at_ms is not None and situation.converted_at_ms > action.fired_at_ms:
        return "converted"
    if not (obeys_consent and action.marketing):
        return None
    consent = situation.consent
    if consent is not None and not consent.marketing:
        return consent.reason if consent.reason in CONSENT_REASONS else "consent_withdrawn"
    if snapshot_reason == "no_consent_recorded" and consent is not None and consent.marketing:
        return None
    return snapshot_reason
