"""Validation of conditions over the lead: `if:` on a rule and the named `segments:` of a rules file."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from engine.core.predicates import OPERATORS
from engine.language.schema import Predicate, normalize_predicate

Report = Callable[[Sequence[Any], str], None]
LEAD_ROOTS = (
    "lead_id",
    "traits",
    "cart",
    "score",
    "stage",
    "scores",
    "stages",
    "pages_in_session",
    "session",
    "time_on_page_ms",
    "last_page",
    "first_seen",
    "last_seen",
    "source",
    "campaign",
    "recent",
)


OPERAND_HELP = {
    "eq": "a single value",
    "ne": "a single value",
    "in": "a list of values",
    "gt": "a number (or a string, compared as text)",
    "gte": "a number (or a string, compared as text)",
    "lt": "a number (or a string, compared as text)",
    "lte": "a number (or a string, compared as text)",
    "exists": "true or false",
    "prefix": "a string",
    "contains": "a single value",
}


def predicate_problems(errors: Sequence[Mapping[str, Any]], base: Sequence[Any]) -> list[tuple[tuple[Any, ...], str]]:
    """pydantic errors of a `Predicate` → one readable problem per operator (union branches collapsed)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    seen: set[Any] = set()
    for error in errors:
        op = error["loc"][0] if error["loc"] else None
        if op in seen:
            continue
        seen.add(op)
        if error["type"] == "extra_forbidden":
            message = f"bad predicate: unknown operator {op!r}; use one of {', '.join(OPERATORS)}"
        elif op in OPERAND_HELP:
            message = f"bad predicate: `{op}` takes {OPERAND_HELP[op]}, got {error.get('input')!r}"
        else:
            message = f"bad predicate: {error['msg'].removeprefix('Value error, ')}"
        out.append(((*base, *([op] if op is not None else [])), message))
    return out


def check_predicate(value: Any, loc: Sequence[Any], report: Report) -> dict[str, Any] | None:
    try:
        return Predicate.model_validate(normalize_predicate(value)).operators()
    except ValidationError as exc:
        for where, message in predicate_problems(exc.errors(), loc):
            report(where, message)
        return None


def check_condition(
    spec: Any,
    loc: Sequence[Any],
    report: Report,
    segments: Collection[str] | None,
) -> dict[str, Any] | None:
    """The condition `spec` validated and normalised (predicates as operator mappings), or None when invalid; each
    problem is reported once through `report(loc, message)`. Never raises.

    A condition is a mapping; all its entries must hold:
    - `PATH: PREDICATE`: a dotted path into the lead view (`traits.plan`, `score`, `stage`, `cart.value`,
      `pages_in_session`, ...) and a predicate (scalar = eq, list = in, or a mapping of operators);
    - `segment: NAME` (or a list of names): a named segment holds;
    - `any: [COND, ...]`, `all: [COND, ...]`, `not: COND`.
    `segments=None` means segment references are not allowed here (inside a segment definition).
    """
    if not isinstance(spec, dict) or not spec:
        report(loc, "a condition must be a non-empty mapping of `path: predicate` (or segment/any/all/not)")
        return None
    out: dict[str, Any] = {}
    ok = True
    for key, value in spec.items():
        here = (*loc, key)
        if key == "segment":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                report(here, "`segment:` takes a segment name or a list of names")
                ok = False
            elif segments is None:
                report(here, "a segment cannot use other segments; write its conditions out")
                ok = False
            else:
                for name in names:
                    if name not in segments:
                        known = ", ".join(sorted(segments)) or "none defined"
                        report(here, f"unknown segment {name!r} (defined segments: {known})")
                        ok = False
                out[key] = names
        elif key in ("any", "all"):
            if not isinstance(value, list) or not value:
                report(here, f"`{key}:` takes a non-empty list of conditions")
                ok = False
                continue
            parts = [check_condition(item, (*here, i), report, segments) for i, item in enumerate(value)]
            ok = ok and all(p is not None for p in parts)
            out[key] = parts
        elif key == "not":
            inner = check_condition(value, here, report, segments)
            ok = ok and inner is not None
            out[key] = inner
        else:
            if not isinstance(key, str) or not key or key.split(".")[0] not in LEAD_ROOTS:
                report(
                    here,
                    f"unknown lead path {key!r}: conditions read the lead view, starting with one of "
                    f"{', '.join(LEAD_ROOTS)} (or segment, any, all, not)",
                )
                ok = False
                continue
            predicate = check_predicate(value, here, report)
            ok = ok and predicate is not None
            out[key] = predicate
    return out if ok else None
