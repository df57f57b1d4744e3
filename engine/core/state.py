"""Per-lead state: one plain, compact, JSON-serialisable value per lead.

Contract:
- `LeadState` holds the lead id, its derived facts (`facts`, see `engine.core.facts`), one slot per rule that
  has something pending (`rules[rule.key]`, owned by that rule's kind) and the firing history used by cooldown
  and `max_per_lead` (`gates[rule.key] = [last_fired_ms, fires_on_that_utc_day]`).
- Everything that can grow is bounded (windows pruned by time and capped by count; traits and cart capped), so
  one table entry per lead stays small (well under 1 KiB for the shipped pack) whatever the length of its
  history.
- `to_bytes()` / `from_bytes()` round-trip exactly (orjson); `copy()` is a deep copy: the core never mutates a
  state it was given, so the shell may keep the old value until it commits the new one.
- `merge(other)` folds an anonymous lead's state into the known lead's (identity merge): see `merge_facts` and
  each kind's `merge`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.core.facts import merge_facts

DAY_MS = 86_400_000

if TYPE_CHECKING:
    from engine.core.ruleset import RuleSet


class LeadState:
    """Mutable only inside `evaluate` on a private copy; treat instances you receive as immutable."""

    __slots__ = ("facts", "gates", "lead_id", "rules")

    def __init__(
        self,
        lead_id: str = "",
        facts: dict[str, Any] | None = None,
        rules: dict[str, Any] | None = None,
        gates: dict[str, list[int]] | None = None,
    ) -> None:
        self.lead_id = lead_id
        self.facts: dict[str, Any] = facts if facts is not None else {}
        self.rules: dict[str, Any] = rules if rules is not None else {}
        self.gates: dict[str, list[int]] = gates if gates is not None else {}

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.lead_id}
        if self.facts:
            doc["f"] = self.facts
        if self.rules:
            doc["r"] = self.rules
        if self.gates:
            doc["g"] = self.gates
        return doc

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LeadState:
        return cls(doc.get("id", ""), doc.get("f") or {}, doc.get("r") or {}, doc.get("g") or {})

    @classmethod
    def from_bytes(cls, data: bytes | str) -> LeadState:
        return cls.from_json(orjson.loads(data))

    def copy(self) -> LeadState:
        return LeadState.from_json(orjson.loads(orjson.dumps(self.to_json())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeadState) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"LeadState({self.to_bytes().decode()})"

    def size(self) -> int:
        return len(self.to_bytes())

    def merge(self, other: LeadState, rules: RuleSet | None = None) -> LeadState:
        """Fold `other` (the anonymous lead) into this (known) lead; returns a new state keeping this lead id.

        Facts: this lead's values win, the other fills gaps (first seen is the earliest; carts are united).
        Rule slots: with `rules`, each kind merges its two slots (scores add up, windows unite, the earlier
        absence episode is kept); without `rules`, this lead's slot wins and the other's fills missing ones.
        Gates: the latest fire and the larger same-day count, so caps cannot be dodged by identifying.
        """
        mine, theirs = self.copy(), other.copy()
        merged_rules = dict(theirs.rules)
        for rule_id, slot in mine.rules.items():
            rule = rules.by_key.get(rule_id) if rules is not None else None
            if rule is not None and rule_id in theirs.rules:
                merged_rules[rule_id] = rule.logic.merge(slot, theirs.rules[rule_id])
            else:
                merged_rules[rule_id] = slot
        gates = dict(theirs.gates)
        for rule_id, gate in mine.gates.items():
            other_gate = gates.get(rule_id)
            if other_gate is None:
                gates[rule_id] = gate
            elif other_gate[0] // DAY_MS == gate[0] // DAY_MS:
                gates[rule_id] = [max(gate[0], other_gate[0]), max(gate[1], other_gate[1])]
            else:
                gates[rule_id] = max(gate, other_gate)
        return LeadState(self.lead_id or other.lead_id, merge_facts(mine.facts, theirs.facts), merged_rules, gates)
