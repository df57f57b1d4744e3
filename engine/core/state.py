"""Per-lead state: one compact value per lead, kept by the worker as JSON bytes in its changelog-backed table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.core.facts import merge_facts

DAY_MS = 86_400_000

if TYPE_CHECKING:
    from engine.core.ruleset import Rule, RuleSet, Slot


def _tuple_form(value: object) -> tuple[object, ...]:
    """orjson's fallback: a typed slot (a NamedTuple or tuple subclass) is stored as its plain tuple, a JSON array."""
    if isinstance(value, tuple):
        return tuple(value)
    raise TypeError(f"{type(value).__name__} is not part of a lead state")


class LeadState:
    """One lead's state: its id, derived facts, one slot per rule with something pending, and the gates.

    - `facts`: see `engine.core.facts` (short keys, bounded sizes). `rules[rule.key]`: that rule's slot, owned
      by its kind (`engine.core.ruleset.RuleLogic`). `gates[rule.key] = [last_fired_ms, fires_on_that_utc_day]`:
      the firing history that cooldown and `max_per_lead` need.
    - Small whatever the length of the lead's history: everything that can grow is bounded (windows pruned by
      time and capped by count; traits and cart capped), so one entry stays well under 1 KiB for the shipped
      rule pack.
    - `to_bytes()` is compact JSON: typed slots are written as arrays, without field names.
      `from_bytes(to_bytes())` gives an equal state (`==` compares the stored form). `from_bytes` leaves each
      slot in its stored JSON form, because only the rule set knows which kind a slot belongs to; `evaluate`
      has the kinds read them when needed (`RuleLogic.load`, which also reads the layouts stored before slots
      were typed: score slots as objects, threshold windows as lists of entries), and a slot no rule touched is
      written back as it was read. `from_bytes` raises `orjson.JSONDecodeError` (a `ValueError`) on bytes that
      are not JSON.
    - Mutable only inside `evaluate`, on a private copy (or on a state the caller handed over with
      `reuse_state=True`); treat instances you receive as immutable. `copy()` is independent for everything the
      core changes: facts are deep-copied; slots are immutable values and are shared.
    """

    __slots__ = ("_read_for", "experiments", "facts", "gates", "lead_id", "rules")

    def __init__(
        self,
        lead_id: str = "",
        facts: dict[str, Any] | None = None,
        rules: dict[str, Slot] | None = None,
        gates: dict[str, list[int]] | None = None,
        experiments: dict[str, list[Any]] | None = None,
    ) -> None:
        self.lead_id = lead_id
        self.facts: dict[str, Any] = facts if facts is not None else {}
        self.rules: dict[str, Slot] = rules if rules is not None else {}
        self.gates: dict[str, list[int]] = gates if gates is not None else {}
        # experiment key -> [arm, assigned_at_ms]: kept only during the experiment's goal window
        # (engine.core.experiments); at most one entry per experiment of the rule set.
        self.experiments: dict[str, list[Any]] = experiments if experiments is not None else {}
        self._read_for: RuleSet | None = None  # the rule set `read_slots` last prepared these slots for

    def _doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.lead_id}
        if self.facts:
            doc["f"] = self.facts
        if self.rules:
            doc["r"] = self.rules
        if self.gates:
            doc["g"] = self.gates
        if self.experiments:
            doc["x"] = self.experiments
        return doc

    def to_bytes(self) -> bytes:
        return orjson.dumps(self._doc(), default=_tuple_form)

    def to_json(self) -> dict[str, Any]:
        """The stored form as plain JSON values (slots as arrays)."""
        doc: dict[str, Any] = orjson.loads(self.to_bytes())
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LeadState:
        return cls(doc.get("id", ""), doc.get("f") or {}, doc.get("r") or {}, doc.get("g") or {}, doc.get("x") or {})

    @classmethod
    def from_bytes(cls, data: bytes | str) -> LeadState:
        return cls.from_json(orjson.loads(data))

    def copy(self) -> LeadState:
        facts: dict[str, Any] = orjson.loads(orjson.dumps(self.facts))
        gates = {key: list(gate) for key, gate in self.gates.items()}
        experiments = {key: list(entry) for key, entry in self.experiments.items()}
        copy = LeadState(self.lead_id, facts, dict(self.rules), gates, experiments)
        copy._read_for = self._read_for
        return copy

    def read_slots(self, rules: RuleSet) -> None:
        """Drop the slots of rules that are gone from `rules` or disabled (state cannot outlive its rules; a slot
        stored under a rule's key of an earlier release, `RuleSet.legacy`, is kept under its key now), and
        have the kinds with deadlines read their slots still in stored JSON form (`RuleLogic.load`) once, as every
        step asks them for their deadlines. Other slots are read when their rule first sees an event (and stored
        typed by `evaluate`); a slot no event touches is written back as it was read, with no work.
        `evaluate` calls this on the state it works on; it changes how a slot is held, never its value."""
        if self._read_for is rules:
            return  # done for this rule set, whose rules add only typed slots of their own
        slots, by_key, timed = self.rules, rules.by_key, rules.timed
        stale = [key for key in slots if (rule := by_key.get(key)) is None or not rule.enabled]
        for key in stale:
            slot = slots.pop(key)
            adopted = rules.legacy.get(key)  # stored before rule versions were part of the key: still the rule's
            if adopted is not None and adopted not in slots:
                slots[adopted] = slot
        gates = self.gates
        if gates and rules.legacy:
            for key in [key for key in gates if key in rules.legacy]:
                gates.setdefault(rules.legacy[key], gates.pop(key))
        for key, slot in slots.items():
            if key in timed and (type(slot) is list or type(slot) is dict):
                typed = by_key[key].logic.load(slot)
                if typed is not None:
                    slots[key] = typed  # replaces a value: the dict's size does not change
        self._read_for = rules

    def slot(self, rule: Rule) -> Slot | None:
        """This rule's slot, read into its kind's type (None: nothing pending)."""
        return rule.logic.load(self.rules.get(rule.key))

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
        Gates: the latest fire and the larger count in the same `per` period (ever, without `per`), so caps cannot
        be dodged by identifying. Experiment entries: this (known) lead's; the other's are dropped, because the
        arm is that of the lead id the state is kept under (the anonymous id's assignment stays in its history) —
        except a journey split's when the other lead's journey in progress is the one kept (its later sends carry
        the arm of the path it took).
        """
        mine, theirs = self.copy(), other.copy()
        merged_rules = dict(theirs.rules)
        for key, slot in mine.rules.items():
            rule = rules.by_key.get(key) if rules is not None else None
            if rule is not None and key in theirs.rules:
                merged = rule.logic.merge(slot, theirs.rules[key])
                if merged is None:
                    merged_rules.pop(key, None)
                else:
                    merged_rules[key] = merged
            else:
                merged_rules[key] = slot
        gates = dict(theirs.gates)
        for key, gate in mine.gates.items():
            other_gate = gates.get(key)
            rule = rules.by_key.get(key) if rules is not None else None
            per_ms = rule.per_ms if rule is not None else DAY_MS
            if other_gate is None:
                gates[key] = gate
            elif per_ms is None or other_gate[0] // per_ms == gate[0] // per_ms:
                gates[key] = [max(gate[0], other_gate[0]), max(gate[1], other_gate[1])]
            else:
                gates[key] = max(gate, other_gate)
        experiments = mine.experiments if self.lead_id else theirs.experiments
        if rules is not None and self.lead_id and theirs.experiments:
            for key, (rule, experiment) in rules.experiments.items():
                entry = theirs.experiments.get(key)
                if experiment is rule.experiment or entry is None or key in experiments or rule.key not in theirs.rules:
                    continue
                kept = merged_rules.get(rule.key)
                if kept is not None and rule.logic.load(kept) == rule.logic.load(theirs.rules[rule.key]):
                    experiments[key] = entry  # the other lead's journey (and the path it took) moved here
        return LeadState(
            self.lead_id or other.lead_id, merge_facts(mine.facts, theirs.facts), merged_rules, gates, experiments
        )
