"""Compiled predicates and matchers: plain rule specs turned into closures once, at load time.

Validation (unknown operators, wrong operand types) is the language layer's job; this module trusts its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.events import Event

Getter = Callable[[Any], Any]
ValueTest = Callable[[Any], bool]
Condition = Callable[[Mapping[str, Any]], bool]

OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "exists", "prefix", "contains")


class MatchContext(Protocol):
    """What a matcher reads: the event document and the lead view, both built at most once per event."""

    @property
    def event(self) -> Event: ...

    @property
    def doc(self) -> Mapping[str, Any]: ...

    @property
    def lead(self) -> Mapping[str, Any]: ...


Matcher = Callable[[MatchContext], bool]


def compile_path(path: str) -> Getter:
    """A getter for a dotted path over nested dicts/lists (`properties.items.0.sku`); a missing step yields None."""
    parts = tuple(path.split("."))

    def get(root: Any) -> Any:
        value = root
        for part in parts:
            if isinstance(value, Mapping):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit():
                index = int(part)
                value = value[index] if index < len(value) else None
            else:
                return None
            if value is None:
                return None
        return value

    if len(parts) == 1:
        key = parts[0]
        return lambda root: root.get(key) if isinstance(root, Mapping) else None
    return get


def comparable_number(value: Any) -> int | float | None:
    """A number from event data: an int or float as it is (an int stays exact, so `eq` on a numeric id works), a
    numeric string as a float; None for anything else. Booleans are not numbers; "nan", "inf" and values beyond a
    float's range are none either (they never compare, and one would poison a sum). The rule matchers compare with
    it, and `engine.core.experiments.money` reads amounts with it, so both accept the same values. (The stored
    facts use `engine.core.facts.finite_number`, which turns large ints into floats to keep the state JSON-safe.)"""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return value if math.isfinite(value) else None
        if isinstance(value, str):
            number = float(value)
            return number if math.isfinite(number) else None
    except (ValueError, OverflowError):  # not numeric, or an int too large for a float
        return None
    return None


def _ordered(operand: Any, accept: Callable[[Any], bool]) -> ValueTest:
    """gt/gte/lt/lte: numbers compare numerically (numeric strings too), strings lexically (ISO dates)."""
    if isinstance(operand, str):
        return lambda v: isinstance(v, str) and accept((v > operand) - (v < operand))

    def test(value: Any) -> bool:
        number = comparable_number(value)
        return number is not None and accept((number > operand) - (number < operand))

    return test


def _equals(operand: Any) -> ValueTest:
    if isinstance(operand, bool) or operand is None:
        return lambda v: v is operand or (v == operand and type(v) is type(operand))
    if isinstance(operand, int | float):
        return lambda v: not isinstance(v, bool) and comparable_number(v) == operand
    return lambda v: v == operand


def _contains(operand: Any) -> ValueTest:
    def test(value: Any) -> bool:
        if isinstance(value, str):
            return isinstance(operand, str) and operand in value
        if isinstance(value, list | tuple):
            return operand in value
        return False

    return test


def _single(op: str, operand: Any) -> ValueTest:
    if op == "eq":
        return _equals(operand)
    if op == "ne":
        equal = _equals(operand)
        return lambda v: not equal(v)
    if op == "in":
        tests = [_equals(item) for item in operand]
        return lambda v: any(t(v) for t in tests)
    if op == "gt":
        return _ordered(operand, lambda c: c > 0)
    if op == "gte":
        return _ordered(operand, lambda c: c >= 0)
    if op == "lt":
        return _ordered(operand, lambda c: c < 0)
    if op == "lte":
        return _ordered(operand, lambda c: c <= 0)
    if op == "exists":
        return (lambda v: v is not None) if operand else (lambda v: v is None)
    if op == "prefix":
        return lambda v: isinstance(v, str) and v.startswith(operand)
    if op == "contains":
        return _contains(operand)
    raise ValueError(f"unknown operator {op!r}")


def compile_predicate(ops: Mapping[str, Any]) -> ValueTest:
    """A validated predicate mapping (`{"gte": 3}`, `{"prefix": "/pricing"}`, ...) as `value -> bool`. Several
    operators in one mapping must all hold. Never raises: a value of the wrong type simply does not match (a
    numeric string compares as a number)."""
    tests = [_single(op, operand) for op, operand in ops.items()]
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(t(v) for t in tests)


def _on_lead(get: Getter, test: ValueTest) -> Matcher:
    return lambda ctx: test(get(ctx.lead))


def _on_event(get: Getter, test: ValueTest) -> Matcher:
    return lambda ctx: test(get(ctx.doc))


def _compile_where(where: Mapping[str, Mapping[str, Any]]) -> list[Matcher]:
    checks: list[Matcher] = []
    for path, ops in where.items():
        test = compile_predicate(ops)
        if path.startswith("lead."):
            checks.append(_on_lead(compile_path(path[len("lead.") :]), test))
        else:
            checks.append(_on_event(compile_path(path), test))
    return checks


def compile_matcher(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Matcher:
    """`{event, type, where, trusted}` (or a list of them: any-of) as `MatchContext -> bool`; the cheapest checks
    (type, event name) run first. `where` paths read the event document (`Event.document()`); paths starting with
    `lead.` read the lead view as it is after this event was applied. `trusted: true` matches only events whose
    `Event.trusted` is true (sent with a server write key or a verified user hash, or produced server-side)."""
    if not isinstance(spec, Mapping):
        alternatives = [compile_matcher(item) for item in spec]
        return lambda ctx: any(m(ctx) for m in alternatives)
    events = frozenset(spec["event"]) if spec.get("event") else None
    types = frozenset(spec["type"]) if spec.get("type") else None
    checks = _compile_where(spec.get("where") or {})
    if spec.get("trusted"):
        checks.insert(0, _trusted_only)

    def match(ctx: MatchContext) -> bool:
        doc = ctx.doc
        if types is not None and doc["type"] not in types:
            return False
        if events is not None and (doc["type"] != "track" or doc["name"] not in events):
            return False
        return all(check(ctx) for check in checks)

    return match


def _trusted_only(ctx: MatchContext) -> bool:
    return ctx.event.trusted


def compile_condition(spec: Mapping[str, Any], segments: Mapping[str, Condition] | None = None) -> Condition:
    """An `if:` condition over the lead view. Keys: paths → predicates, `segment`, `any`, `all`, `not`."""
    parts: list[Condition] = []
    for key, value in spec.items():
        if key == "segment":
            names = [value] if isinstance(value, str) else list(value)
            parts.extend((segments or {})[name] for name in names)
        elif key in ("any", "all"):
            parts.append(_any_or_all(key, [compile_condition(item, segments) for item in value]))
        elif key == "not":
            parts.append(_negated(compile_condition(value, segments)))
        else:
            parts.append(_holds(compile_path(key), compile_predicate(value)))
    return _all(parts)


def _any_or_all(which: str, options: list[Condition]) -> Condition:
    return _all(options) if which == "all" else (lambda lead: any(c(lead) for c in options))


def _all(parts: list[Condition]) -> Condition:
    return lambda lead: all(p(lead) for p in parts)


def _negated(inner: Condition) -> Condition:
    return lambda lead: not inner(lead)


def _holds(get: Getter, test: ValueTest) -> Condition:
    return lambda lead: test(get(lead))


def describe_matcher(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> str:
    """Human text for explanations: `'Product Added'`, `a page where properties.path prefix '/pricing'`."""
    if spec is None:
        return "nothing"
    if not isinstance(spec, Mapping):
        return " or ".join(describe_matcher(item) for item in spec)
    if spec.get("event"):
        head = " or ".join(f"'{name}'" for name in spec["event"])
    elif spec.get("type"):
        head = "a " + "/".join(spec["type"]) + " event"
    else:
        head = "any event"
    where = spec.get("where") or {}
    if where:
        conds = [f"{path} {op} {operand!r}" for path, ops in where.items() for op, operand in ops.items()]
        head += " where " + " and ".join(conds)
    if spec.get("trusted"):
        head += " (trusted only)"
    return head
