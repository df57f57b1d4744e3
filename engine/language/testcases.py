"""Rule test cases: events in, expected actions out, kept next to the rule files (`*.test.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.ruleset import RuleSet
from engine.core.simulate import simulate
from engine.events import InvalidEvent, format_ts, parse_event, parse_ts
from engine.language.loader import TEST_SUFFIXES, load_rules
from engine.language.problems import Problem, RuleFileError
from engine.language.yamlnodes import YamlProblem, load_yaml, locate


@dataclass(slots=True)
class CaseResult:
    """One case's outcome: `str()` is the `ok`/`FAIL` line with the case's position, then one line per failure."""

    file: str
    line: int
    name: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    covered: frozenset[str] = frozenset()  # rules this case expects an action from
    steps: frozenset[tuple[str, str]] = frozenset()  # (journey, step) this case expects a send from

    def __str__(self) -> str:
        head = f"{'ok  ' if self.passed else 'FAIL'} {self.file}:{self.line}: {self.name}"
        return "\n".join([head, *(f"     {line}" for line in self.failures)])


def find_test_files(paths: list[str | Path]) -> list[Path]:
    """The rule test files (`*.test.yaml`, `*.test.yml`) among `paths` and directly inside directories there."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(TEST_SUFFIXES)))
        elif path.name.endswith(TEST_SUFFIXES):
            found.append(path)
    return found


def _subset(expected: Any, actual: Any, path: str, out: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected a mapping, got {actual!r}")
            return
        for key, value in expected.items():
            _subset(value, actual.get(key), f"{path}.{key}" if path else key, out)
    elif path in ("fired_at", "at") and isinstance(expected, str):
        try:
            same = parse_ts(expected) == parse_ts(actual)
        except InvalidEvent:
            same = False
        if not same:
            out.append(f"{path}: expected {expected}, got {actual}")
    elif isinstance(expected, list) and isinstance(actual, list | tuple):
        if len(expected) != len(actual):
            out.append(f"{path}: expected {expected!r}, got {list(actual)!r}")
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            _subset(e, a, f"{path}[{i}]", out)
    elif expected != actual:
        out.append(f"{path}: expected {expected!r}, got {actual!r}")


def _brief(action: dict[str, Any]) -> str:
    step = f" step {action['step']}" if action.get("step") else ""
    arm = f" [{action['experiment']}: {action['variant']}]" if action.get("experiment") else ""
    return f"{action['rule']}{step}{arm} for {action['lead_id']} at {action['fired_at']}"


def _journey_record(update: dict[str, Any]) -> dict[str, Any]:
    """A journey record as a case compares it: the `lead-updates` record plus `at`, its time in ISO-8601."""
    return {**update, "at": format_ts(update["at_ms"])}


def _brief_record(record: dict[str, Any]) -> str:
    reason = f" ({record['reason']})" if record.get("reason") else ""
    step = f" {record['step']}" if record.get("step") else ""
    return f"{record['journey']} {record['event']}{step}{reason} for {record['lead_id']} at {record['at']}"


def _brief_experiment(record: dict[str, Any]) -> str:
    return f"{record['experiment']} {record['event']} {record['variant']} for {record['lead_id']} at {record['at']}"


def _compare(expected: list[Any], got: list[dict[str, Any]], label: str, brief: Any, failures: list[str]) -> None:
    for i, want in enumerate(expected):
        if i >= len(got):
            failures.append(f"{label}[{i}]: missing {want!r}")
            continue
        problems: list[str] = []
        _subset(want, got[i], "", problems)
        failures.extend(f"{label}[{i}] ({brief(got[i])}): {p}" for p in problems)


def run_case(rules: RuleSet, case: dict[str, Any], only: list[str] | None) -> list[str]:
    failures: list[str] = []
    events = []
    for i, raw in enumerate(case.get("events") or []):
        try:
            events.append(parse_event(raw))
        except InvalidEvent as exc:
            failures.append(f"events[{i}]: invalid event: {exc}")
    if failures:
        return failures
    updates: list[dict[str, Any]] = []
    actions = [a.to_json() for a in simulate(rules, events, flush=case.get("flush", True), updates=updates)]
    if only is not None:
        actions = [a for a in actions if a["rule"] in only]
    expected = case.get("expect") or []
    _compare(expected, actions, "expect", _brief, failures)
    failures.extend(f"unexpected action: {_brief(a)}: {a['explanation']}" for a in actions[len(expected) :])
    if "journeys" in case:
        records = [
            _journey_record(u) for u in updates if u.get("kind") == "journey" and (only is None or u["journey"] in only)
        ]
        wanted = case.get("journeys") or []
        _compare(wanted, records, "journeys", _brief_record, failures)
        failures.extend(f"unexpected journey record: {_brief_record(r)}" for r in records[len(wanted) :])
    if "experiments" in case:
        records = [
            _journey_record(u) for u in updates if u.get("kind") == "experiment" and (only is None or u["rule"] in only)
        ]
        wanted = case.get("experiments") or []
        _compare(wanted, records, "experiments", _brief_experiment, failures)
        failures.extend(f"unexpected experiment record: {_brief_experiment(r)}" for r in records[len(wanted) :])
    return failures


def run_test_file(path: Path, rules: RuleSet | None = None) -> list[CaseResult]:
    """Run one test file against the rule files of its own directory (segments and rule interplay included), or
    against `rules`; one result per case. Raises `RuleFileError` (problems as `file:line:col: message`) when the
    file, or its directory's rules, is invalid.

    File format:
    ```yaml
    rules: [cart_abandoned]        # optional: compare only actions of these rules (default: every rule)
    cases:
      - name: abandoned cart fires 30 minutes after the last add
        flush: true                # optional (default true): advance time past pending deadlines at the end
        rules: [cart_abandoned]    # optional per case
        events:                    # Segment-spec events, as on the wire (messageId optional)
          - {type: track, event: Product Added, userId: u1, timestamp: "2026-01-05T10:00:00Z"}
        expect:                    # the exact list of actions, in order; each entry: a subset of the action JSON
          - {rule: cart_abandoned, lead_id: u1, fired_at: "2026-01-05T10:30:00Z"}
        journeys:                  # optional: the exact list of journey records (lead-updates, kind journey)
          - {journey: cart_rescue, event: entered, at: "2026-01-05T10:00:00Z"}
        experiments:               # optional: the exact list of experiment records (kind experiment)
          - {experiment: cart-copy-test, event: assigned, variant: b, at: "2026-01-05T10:30:00Z"}
    ```
    An expected entry matches when every given field equals the action's (nested mappings: subset; `fired_at`,
    and a journey or experiment record's `at`: any ISO-8601 spelling of the same instant). `journeys:` and
    `experiments:` are compared only when the case has them (records in the order `simulate` gives them,
    restricted to the case's `rules:`).
    """
    name = str(path)
    try:
        root, data = load_yaml(path.read_text(encoding="utf-8"))
    except YamlProblem as exc:
        raise RuleFileError([Problem(name, exc.line, exc.col, exc.message)]) from None
    except OSError as exc:
        raise RuleFileError([Problem(name, 1, 1, f"cannot read test file: {exc.strerror or exc}")]) from None
    problems: list[Problem] = []

    def report(loc: tuple[Any, ...], message: str) -> None:
        line, col = locate(root, loc)
        problems.append(Problem(name, line, col, message))

    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        report((), "a rule test file is a mapping with `cases:` (a list) and optionally `rules:` (rule ids)")
        raise RuleFileError(problems)
    for key in data:
        if key not in ("rules", "cases"):
            report((key,), f"unknown key {key!r} in a rule test file (use `rules:` and `cases:`)")
    for i, case in enumerate(data["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("events"), list):
            report(("cases", i), "a test case needs `events:` (a list) and `expect:` (a list, may be empty)")
            continue
        for key in case:
            if key not in ("name", "events", "expect", "flush", "rules", "journeys", "experiments"):
                report(("cases", i, key), f"unknown key {key!r} in a test case")
    if rules is None:
        rules = load_rules([path.parent])
    for rule_id in data.get("rules") or []:
        if rules.get(rule_id) is None:
            report(("rules",), f"unknown rule {rule_id!r} (not defined in {path.parent})")
    if problems:
        raise RuleFileError(problems)
    results = []
    for i, case in enumerate(data["cases"]):
        line, _ = locate(root, ("cases", i))
        only = case.get("rules", data.get("rules"))
        failures = run_case(rules, case, only)
        title = str(case.get("name") or f"case {i + 1}")
        wanted = [e for e in case.get("expect") or () if isinstance(e, dict)]
        covered = frozenset(e["rule"] for e in wanted if isinstance(e.get("rule"), str))
        steps = frozenset(
            (e["rule"], e["step"]) for e in wanted if isinstance(e.get("rule"), str) and isinstance(e.get("step"), str)
        )
        results.append(CaseResult(name, line, title, not failures, failures, covered, steps))
    return results
