"""`nudge rules validate|test`: check rule files before shipping them; `nudge rules deploy|history|rollback|status`:
ship them to running workers as versioned rule sets (`engine.worker.rule_versions`)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from engine.config import ConfigError, Settings
from engine.core.kinds.journey import JourneyLogic
from engine.core.ruleset import Rule, RuleSet
from engine.dispatch.config import catalogue
from engine.language import RuleFileError, load_rules, rule_files
from engine.language.testcases import find_test_files, run_test_file


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("rules", help="validate, test and deploy rule files")
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
    deploy = actions.add_parser("deploy", help="validate rule files and publish them as the workers' rule set")
    deploy.add_argument("paths", nargs="+", help="rule files or directories (the whole rule set)")
    deploy.add_argument("--connectors", type=Path, help="connectors file the rules must match (as validate)")
    deploy.add_argument("--author", help="who deploys (default: the user name)")
    deploy.add_argument("--message", "-m", default="", help="what changed and why")
    deploy.set_defaults(func=run_deploy)
    history = actions.add_parser("history", help="list the deployed rule-set versions, oldest first")
    history.add_argument("--json", action="store_true", help="one JSON object per deploy")
    history.set_defaults(func=run_history)
    rollback = actions.add_parser("rollback", help="deploy an earlier version's rule set again")
    rollback.add_argument("version", help="a version from `nudge rules history` (a unique prefix is enough)")
    rollback.add_argument("--connectors", type=Path, help="connectors file the rules must match (as validate)")
    rollback.add_argument("--author", help="who deploys (default: the user name)")
    rollback.add_argument("--message", "-m", default="", help="why")
    rollback.set_defaults(func=run_rollback)
    diff = actions.add_parser("diff", help="dry-run rule files against the deployed rules over stored history")
    diff.add_argument("paths", nargs="+", help="the new rule files or directories (the whole rule set)")
    diff.add_argument("--since", default="7d", help="history window ending now: 30m, 24h, 7d, 2w")
    diff.add_argument("--against", action="append", help="compare with these rule files instead of the deployed set")
    diff.add_argument("--connectors", type=Path, help="connectors file the rules must match (as validate)")
    diff.add_argument("--json", action="store_true", help="print one JSON document")
    diff.add_argument("--check", action="store_true", help="exit 1 when any rule's actions change (for CI)")
    diff.set_defaults(func=run_diff)
    status = actions.add_parser("status", help="the deployed version and the version each worker runs")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every file is valid (prints a one-line summary to stderr), else exit 2 with one line per
    problem on stdout: `file:line:col: message`. With a connectors file (`--connectors`, else
    NUDGE_CONNECTORS_PATH when it exists) a rule may name only the connectors it defines, and only templates
    those connectors can render; without one, the built-in connector types. An invalid connectors file: exit 2.
    """
    found = validated(args.paths, args.connectors)
    if isinstance(found, int):
        return found
    rules, files = found
    print(
        f"ok: {len(rules.rules)} rules in {len(files)} file(s), rule set version {rules.version}",
        file=sys.stderr,
    )
    return 0


def rule_loader(connectors: Path | None) -> Callable[[Sequence[str | Path]], RuleSet] | int:
    """`load_rules` with the connectors check of `nudge rules validate` (see `run_validate`), or exit code 2 after
    printing why the connectors file is invalid."""
    connectors_path = connectors or Settings.from_env().connectors_path
    names: dict[str, str] | None = None
    templates = None
    if connectors is not None or connectors_path.exists():
        try:
            found = catalogue(connectors_path)
        except (ConfigError, OSError) as exc:
            print(f"{connectors_path}: {exc}")
            return 2
        names, templates = found.names, found.template_exists
    return functools.partial(load_rules, known_connectors=names, template_exists=templates)


def validated(paths: Sequence[str], connectors: Path | None) -> tuple[RuleSet, list[Path]] | int:
    """The rule set and its files, exactly as `nudge rules validate` checks them; or, with the problems printed
    (`file:line:col: message`, one a line on stdout), exit code 2."""
    missing = [p for p in paths if not Path(p).exists()]
    for path in missing:
        print(f"{path}:1:1: no such file or directory", flush=True)
    load = rule_loader(connectors)
    if isinstance(load, int):
        return load
    try:
        rules = load([p for p in paths if Path(p).exists()])
    except RuleFileError as exc:
        for problem in exc.problems:
            print(problem)
        return 2
    if missing:
        return 2
    return rules, rule_files(paths)


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


def _kafka_error(exc: Exception) -> int:
    url = Settings.from_env().broker_url
    print(f"nudge rules: cannot reach the broker at {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def run_deploy(args: argparse.Namespace) -> int:
    """Validate the files exactly like `nudge rules validate` (same problems on stdout, exit 2, nothing published),
    then publish the whole rule set as one version on the `rules` topic (`engine.worker.rule_versions`); every
    running worker switches to it at a batch boundary. Exit 0 published (the version on stdout), 1 broker
    unreachable, 2 invalid."""
    from engine.worker import rule_versions

    found = validated(args.paths, args.connectors)
    if isinstance(found, int):
        return found
    rules, files = found
    deploy = rule_versions.snapshot(files, rules, args.author or rule_versions.author_name(), args.message)
    return _publish(deploy, "deployed")


def _publish(deploy: Any, what: str) -> int:
    settings = Settings.from_env()
    try:
        asyncio.run(_publish_async(settings, deploy))
    except Exception as exc:
        return _kafka_error(exc)
    note = f" ({deploy.message})" if deploy.message else ""
    print(deploy.version)
    print(
        f"{what} rule set version {deploy.version}: {len(deploy.rules)} rules in {len(deploy.files)} file(s), "
        f"by {deploy.author}{note}; workers switch within seconds (`nudge rules status`)",
        file=sys.stderr,
    )
    return 0


async def _publish_async(settings: Settings, deploy: Any) -> None:
    from engine.worker import rule_versions

    await rule_versions.ensure_rules_topic(settings)
    await rule_versions.publish(settings, deploy.key, deploy.to_bytes())


def _read_log() -> Any:
    from engine.worker import rule_versions

    return asyncio.run(rule_versions.read_log(Settings.from_env()))


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_history(args: argparse.Namespace) -> int:
    """Every deploy on the `rules` topic, oldest first; `*` marks the deployed (latest) one. Exit 0, 1 when the
    broker is unreachable."""
    try:
        log = _read_log()
    except Exception as exc:
        return _kafka_error(exc)
    if not log.deploys:
        print("no rule set deployed yet (workers run the files of NUDGE_RULES_PATH)", file=sys.stderr)
    for n, deploy in enumerate(log.deploys):
        latest = n == len(log.deploys) - 1
        if args.json:
            doc = {
                "version": deploy.version, "at_ms": deploy.at_ms, "author": deploy.author,
                "message": deploy.message, "rules": list(deploy.rules), "active": latest,
            }
            print(orjson.dumps(doc).decode())
        else:
            mark = "*" if latest else " "
            print(
                f"{mark} {deploy.version}  {_when(deploy.at_ms)}  {deploy.author}  {len(deploy.rules)} rules"
                + (f"  {deploy.message}" if deploy.message else "")
            )
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """Deploy the rule set of an earlier version again (a new deploy with that version's files; validated like a
    deploy, against today's connectors). Exit 0, 1 broker unreachable, 2 unknown version or invalid."""
    from engine.worker import rule_versions

    try:
        log = _read_log()
    except Exception as exc:
        return _kafka_error(exc)
    earlier = log.find(args.version)
    if earlier is None:
        print(f"nudge rules rollback: no deployed version {args.version!r} (see `nudge rules history`)")
        return 2
    load = rule_loader(args.connectors)
    if isinstance(load, int):
        return load
    try:
        rules = rule_versions.compile_deploy(earlier, load)
    except RuleFileError as exc:
        for problem in exc.problems:
            print(problem)
        return 2
    message = args.message or f"rollback to {earlier.version}"
    deploy = rule_versions.Deploy(
        rules.version, earlier.files, int(time.time() * 1000), args.author or rule_versions.author_name(), message,
        tuple(r.id for r in rules.rules),
    )
    return _publish(deploy, "rolled back to")


def run_status(args: argparse.Namespace) -> int:
    """The deployed version and, per worker (from the status record each publishes on the `rules` topic when it
    starts, when it switches and every 30 s), the version it evaluates with, since when, when it last said so (a
    worker silent for 90 s is marked: stopped, or its slot moved), and with `--json` the first input offset per
    partition it evaluated with it. Exit 0; 1 when the broker is unreachable."""
    try:
        log = _read_log()
    except Exception as exc:
        return _kafka_error(exc)
    deployed = log.latest.version if log.latest is not None else None
    statuses = sorted(log.statuses.values(), key=lambda s: s.worker)
    if args.json:
        doc = {
            "deployed": deployed,
            "workers": [
                {
                    "worker": s.worker, "version": s.version, "since_ms": s.since_ms, "at_ms": s.at_ms,
                    "source": s.source, "previous": s.previous, "switch": {str(p): o for p, o in s.switch.items()},
                }
                for s in statuses
            ],
        }
        print(orjson.dumps(doc).decode())
        return 0
    print(f"deployed: {deployed or '(nothing: workers run the files of NUDGE_RULES_PATH)'}")
    now_ms = int(time.time() * 1000)
    for s in statuses:
        behind = "" if deployed is None or s.version == deployed else "  NOT THE DEPLOYED VERSION"
        seen_s = max(0, (now_ms - s.at_ms) // 1000)
        gone = "  (silent: stopped?)" if seen_s > STATUS_STALE_S else ""
        print(f"{s.worker}  {s.version}  since {_when(s.since_ms)}  from {s.source}  seen {seen_s}s ago{gone}{behind}")
    return 0


STATUS_STALE_S = 90  # a running worker publishes its status every 30 s


def _deployed_rules(args: argparse.Namespace) -> tuple[RuleSet, str] | int:
    """The rule set `nudge rules diff` compares with: `--against` files, else the latest deploy on the `rules`
    topic, else (nothing deployed yet) the files of NUDGE_RULES_PATH; with where it came from."""
    from engine.worker import rule_versions

    if args.against:
        found = validated(args.against, args.connectors)
        return found if isinstance(found, int) else (found[0], " ".join(args.against))
    try:
        log = _read_log()
    except Exception as exc:
        return _kafka_error(exc)
    if log.latest is None:
        found = validated([str(Settings.from_env().rules_path)], args.connectors)
        return found if isinstance(found, int) else (found[0], "NUDGE_RULES_PATH (nothing deployed)")
    load = rule_loader(args.connectors)
    if isinstance(load, int):
        return load
    return rule_versions.compile_deploy(log.latest, load), f"deployed version {log.latest.version}"


def render_diff(result: Any, against: str, version: str) -> str:
    from engine.commands.report import table

    rows = [
        [r.rule, r.status, r.before, r.after, f"+{r.added}", f"-{r.removed}",
         " ".join([*(f"+{lead}" for lead in r.added_leads), *(f"-{lead}" for lead in r.removed_leads)])]
        for r in result.rules
    ]
    verdict = "CHANGES actions" if result.changes else "no change in actions"
    title = (
        f"Rules diff: {version} against {against}, over {result.events} stored events "
        f"(dry run, nothing sent): {verdict}"
    )
    return table(title, ["rule", "status", "before", "after", "added", "removed", "example leads"], rows)


def run_diff(args: argparse.Namespace) -> int:
    """Per rule, the actions the new rule files would add and remove compared with the deployed rules, over the
    stored history of `--since` (both dry runs of `nudge replay`'s kind, `engine.clickhouse.replay.diff`), with a
    few example leads. Exit 0; with `--check` 1 when anything changes (for CI); 1 when ClickHouse or the broker
    is unreachable; 2 invalid rules or arguments (the new files' problems as `nudge rules validate` prints them)."""
    from engine.commands.report import over_history

    found = validated(args.paths, args.connectors)
    if isinstance(found, int):
        return found
    after = found[0]
    deployed = _deployed_rules(args)
    if isinstance(deployed, int):
        return deployed
    before, against = deployed

    def query(client: Any, since_ms: int, until_ms: int) -> Any:
        from engine.clickhouse.replay import diff

        return diff(client, before, after, since_ms, until_ms)

    settings = Settings.from_env()
    code, result = over_history(
        "rules diff", args, settings, query,
        lambda r: {**r.to_json(), "version": after.version, "against": against},
        lambda r: render_diff(r, against, after.version),
    )
    return 1 if result is not None and args.check and result.changes else code
