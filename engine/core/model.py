"""Values that cross the boundary of the pure core besides events: `Tick` goes in, `Action` comes out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.events import format_ts


@dataclass(frozen=True, slots=True)
class Tick:
    """Event time has reached `now_ms` for this lead with no new event: fire every deadline of the lead at or
    before `now_ms`."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Action:
    """What a fired rule asks the outbound side to do; `context` carries the lead facts a template needs (traits,
    cart, score, stage, owner).

    A plain, immutable, JSON-serialisable value: the wire form on the `actions` topic is `to_bytes()` (sorted
    keys) and `from_json()` reads it back equal. `action_id` comes from `make_action_id`, so a replayed or
    re-evaluated action carries the same id (idempotency keys, ClickHouse dedup). A journey's send carries its
    `step` (the key `"step"` is present only on those). An action of a rule (or journey path) in an experiment
    carries `experiment`, `variant` (the arm: a variant id, `treatment`, or `holdout`) and `held_out` (True for the
    holdout arm: the dispatcher records it `held_out` and never sends it); the three keys are present only then.
    """

    action_id: str
    rule: str
    rule_version: str
    lead_id: str
    fired_at_ms: int
    trigger: tuple[str, ...]  # message ids of the events that made the rule fire
    connector: str
    explanation: str
    template: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    marketing: bool = True  # marketing actions obey consent; sales alerts to reps do not
    on_cap: str = "defer"  # "defer" or "drop" when a frequency cap / quiet hours applies
    context: dict[str, Any] = field(default_factory=dict)
    trigger_time_ms: int | None = None  # event time of the last triggering event (for detection delay)
    expires_at_ms: int | None = None  # not sent by then: suppressed (`expired`); fired_at + the rule's expires_after
    step: str | None = None  # a journey's send: the step id; None for every other kind (and not written then)
    experiment: str | None = None  # the experiment id; None outside experiments (and the three keys not written)
    variant: str | None = None  # the arm: a variant id, "treatment" or "holdout"
    held_out: bool = False  # the holdout arm: logged, never sent

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "action_id": self.action_id,
            "rule": self.rule,
            "rule_version": self.rule_version,
            "lead_id": self.lead_id,
            "fired_at": format_ts(self.fired_at_ms),
            "fired_at_ms": self.fired_at_ms,
            "trigger": list(self.trigger),
            "connector": self.connector,
            "template": self.template,
            "payload": self.payload,
            "priority": self.priority,
            "marketing": self.marketing,
            "on_cap": self.on_cap,
            "explanation": self.explanation,
            "context": self.context,
            "trigger_time_ms": self.trigger_time_ms,
            "expires_at_ms": self.expires_at_ms,
        }
        if self.step is not None:  # only journey actions carry it: every other action's bytes stay as they were
            doc["step"] = self.step
        if self.experiment is not None:  # likewise: only actions of an experiment carry these
            doc["experiment"] = self.experiment
            doc["variant"] = self.variant
            doc["held_out"] = self.held_out
        return doc

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, value: dict[str, Any] | bytes | str) -> Action:
        """Reads `to_json()` (or its bytes); raises KeyError/ValueError/TypeError on a malformed action."""
        doc: dict[str, Any] = value if isinstance(value, dict) else orjson.loads(value)
        return cls(
            action_id=doc["action_id"],
            rule=doc["rule"],
            rule_version=doc["rule_version"],
            lead_id=doc["lead_id"],
            fired_at_ms=int(doc["fired_at_ms"]),
            trigger=tuple(doc.get("trigger") or ()),
            connector=doc["connector"],
            explanation=doc.get("explanation", ""),
            template=doc.get("template"),
            payload=doc.get("payload") or {},
            priority=int(doc.get("priority") or 0),
            marketing=bool(doc.get("marketing", True)),
            on_cap=doc.get("on_cap") or "defer",
            context=doc.get("context") or {},
            trigger_time_ms=doc.get("trigger_time_ms"),
            expires_at_ms=doc.get("expires_at_ms"),
            step=doc.get("step"),
            experiment=doc.get("experiment"),
            variant=doc.get("variant"),
            held_out=bool(doc.get("held_out", False)),
        )


def make_action_id(rule: str, rule_version: str, lead_id: str, trigger_key: str) -> str:
    """Deterministic id: hash of rule id, rule version, lead id and what triggered it (episode/window key); the same
    rule version, lead and trigger always give the same id, and an edited rule (a new version) gives new ids."""
    digest = hashlib.blake2b(
        f"{rule}\x1f{rule_version}\x1f{lead_id}\x1f{trigger_key}".encode(), digest_size=16
    ).hexdigest()
    return f"act_{digest}"
