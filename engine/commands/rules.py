"""`nudge rules validate PATH...` and `nudge rules test [PATH...]`: check rule files before shipping them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import ConfigError, Settings
from engine.core.kinds.journey import JourneyLogic
from engine.core.ruleset import Rule
from engine.dispatch.config import catalogue
from engine.language import RuleFileError, load_rules, rule_files
from engine.language.testcases import find_test_files, run_test_file


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("rules", help="validate and test rule files")
    actions = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    validate = actions.add_parser("validate", help="check rule files; exit 2 with file:line:col problems")
    validate.add_argument("paths", nargs="+", help="rule files or directories")
    validate.add_argument(
        "--connectors",
        type=Path,
        help="connectors file the rules must match (default: NUDGE_CONNECTORS_PATH when that file exists)",
    )
    validate.set_defaults(func=run_validate)
    test = actions.add_parser("test", help="run the rule test cases (*.test.yaml) next to rule files")
    test.add_argument("paths", nargs="*", help="directories or test files (default: NUDGE_RULES_PATH or rules/)")
    test.set_defaults(func=run_test)


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every file is valid (prints a one-line summary to stderr), else exit 2 with one line per
    problem on stdout: `file:line:col: message`. With a connectors file (`--connectors`, else
    NUDGE_CONNECTORS_PATH when it exists) a rule may name only the connectors it defines, and only templates
    those connectors can render; without one, the built-in connector types. An invalid connectors file: exit 2.
    """
    missing = [p for p in args.paths if not Path(p).exists()]
    for path in missing:
        print(f"{path}:1:1: no such file or directory", flush=True)
    connectors_path = args.connectors or Settings.from_env().connectors_path
    names: dict[str, str] | None = None
    templates = None
    if args.connectors is not None or connectors_path.exists():
        try:
            found = catalogue(connectors_path)
        except (ConfigError, OSError) as exc:
            print(f"{connectors_path}: {exc}")
            return 2
        names, templates = found.names, found.template_exists
    try:
        rules = load_rules([p for p in args.paths if Path(p).exists()], names, templates)
    except RuleFileError as exc:
        for problem in exc.problems:
            print(problem)
        return 2
    if missing:
        return 2
    files = rule_files(args.paths)
    print(
        f"ok: {len(rules.rules)} rules in {len(files)} file(s), rule set version {rules.version}",
        file=sys.stderr,
    )
    return 0


def journey_sends(rule: Rule) -> list[str]:
    """The ids of a journey's `send` steps (none for other kinds)."""
    logic = rule.logic
    return [step.id for step in logic.steps if step.kind == "send"] if isinstance(logic, JourneyLogic) else []


def run_test(args: argparse.Namespace) -> int:
    """Run the `*.test.yaml` cases found in the given directories/files (default: the configured rules path)
    against the rules of their directory; print one line per case (`ok` / `FAIL` + the differences). Exit 0 when all
    pass, 1 when a case fails, 2 when a rule or test file is invalid. Notes on stderr name the rules no case
    expects an action of, and the send steps of journeys no case expects (`expect: [{rule, step}]`).
    """
    paths = args.paths or [str(Settings.from_env().rules_path)]
    files = find_test_files(paths)
    if not files:
        print(f"no rule test files (*.test.yaml) found in {', '.join(paths)}", file=sys.stderr)
        return 2
    passed = failed = 0
    invalid = False
    covered: dict[Path, set[str]] = {}
    steps: dict[Path, set[tuple[str, str]]] = {}
    for path in files:
        try:
            results = run_test_file(path)
        except RuleFileError as exc:
            invalid = True
            for problem in exc.problems:
                print(problem)
            continue
        for result in results:
            print(result)
            passed += result.passed
            failed += not result.passed
            covered.setdefault(path.parent, set()).update(result.covered)
            steps.setdefault(path.parent, set()).update(result.steps)
    for directory, rule_ids in covered.items():
        loaded = load_rules([directory])
        untested = [r.id for r in loaded.rules if r.id not in rule_ids]
        if untested:
            print(f"note: no test case in {directory} expects an action of: {', '.join(untested)}", file=sys.stderr)
        unsent = [
            f"{rule.id}.{step}"
            for rule in loaded.rules
            for step in journey_sends(rule)
            if rule.id in rule_ids and (rule.id, step) not in steps.get(directory, set())
        ]
        if unsent:
            print(
                f"note: no test case in {directory} expects a send of journey step: {', '.join(unsent)}",
                file=sys.stderr,
            )
    print(f"{passed} passed, {failed} failed", file=sys.stderr)
    if invalid:
        return 2
    return 1 if failed else 0
