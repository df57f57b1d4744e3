"""`load_rules(paths)`: read, validate and compile rule files into one immutable `RuleSet`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.core.predicates import compile_condition
from engine.core.ruleset import Rule, RuleSet
from engine.language import schema
from engine.language.compiler import compile_rule
from engine.language.conditions import LEAD_ROOTS, check_condition, predicate_problems
from engine.language.experiments import check_rule_experiment
from engine.language.journeys import BranchConditions, check_branch_conditions, check_journey
from engine.language.problems import Problem, RuleFileError
from engine.language.yamlnodes import YamlProblem, load_yaml, locate

DEFAULT_CONNECTORS = frozenset({"webhook", "slack", "email", "kafka", "redis", "crm", "log"})
# (connector name, template or None for `default`) -> whether that connector can render it.
TemplateCheck = Callable[[str, str | None], bool]
TEST_SUFFIXES = (".test.yaml", ".test.yml")
_ALL_KEYS = sorted(
    {name for model in schema.RULE_MODELS.values() for name in model.model_fields}
    | {
        "if",
        "in",
        "event",
        "type",
        "where",
        "field",
        "gte",
        "connector",
        "template",
        "payload",
        "points",
        "at",
    }
    | {"daily_cap", "name", "match", "rules", "segments", "stage", "allow_backward", "on_stage"}
    | {"id", "send", "wait", "wait_for", "within", "then", "else", "branch", "goto", "end"}
    | {"experiment", "holdout", "variants", "weight", "goal", "goal_within", "split", "holdout_goto"}
    | set(schema.Predicate.model_fields) - {"in_", "if_"}
)


def rule_files(paths: Sequence[str | Path]) -> list[Path]:
    """The rule files `paths` name, in load order (see `load_rules`); test files are left out."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [
                p
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix in (".yaml", ".yml") and not p.name.endswith(TEST_SUFFIXES)
            ]
            files.extend(found)
        else:
            files.append(path)
    return files


class _FileContext:
    """Collects problems for one file, turning pydantic-style locations into YAML positions."""

    def __init__(self, name: str, root: yaml.Node | None, problems: list[Problem]) -> None:
        self.name, self.root, self.problems = name, root, problems

    def report(self, loc: Sequence[Any], message: str, key: bool = False) -> None:
        line, col = locate(self.root, loc, key=key)
        self.problems.append(Problem(self.name, line, col, message))

    def report_validation(self, base: Sequence[Any], exc: ValidationError, what: str) -> None:
        predicate_errors: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for error in exc.errors():
            loc = (*base, *error["loc"])
            if "where" in error["loc"]:
                cut = list(error["loc"]).index("where") + 2  # ..., where, PATH | operator, union branch
                if len(error["loc"]) > cut:
                    predicate = (*base, *error["loc"][:cut])
                    predicate_errors.setdefault(predicate, []).append({**error, "loc": error["loc"][cut:]})
                    continue
            field = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
            kind = error["type"]
            if kind == "extra_forbidden":
                key = str(error["loc"][-1])
                hint = difflib.get_close_matches(key, _ALL_KEYS, n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.report(loc, f"{what}: unknown key {key!r}{suffix}", key=True)
            elif kind == "missing":
                self.report(loc, f"{what}: missing required key {field!r}")
            else:
                message = error["msg"].removeprefix("Value error, ")
                self.report(loc, f"{what}: {field + ': ' if field else ''}{message}")
        for base_loc, errors in predicate_errors.items():
            for loc, message in predicate_problems(errors, base_loc):
                unknown_operator = message.startswith("bad predicate: unknown operator")
                self.report(loc, f"{what}: {message}", key=unknown_operator)


def _read_files(files: list[Path], problems: list[Problem]) -> list[tuple[str, str]]:
    sources = []
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except OSError as exc:
            problems.append(Problem(str(path), 1, 1, f"cannot read rule file: {exc.strerror or exc}"))
    return sources


def _parse_sources(
    sources: list[tuple[str, str]], problems: list[Problem]
) -> list[tuple[_FileContext, dict[str, Any]]]:
    parsed = []
    for name, text in sources:
        try:
            root, data = load_yaml(text)
        except YamlProblem as exc:
            problems.append(Problem(name, exc.line, exc.col, exc.message))
            continue
        ctx = _FileContext(name, root, problems)
        if data is None:
            continue
        if not isinstance(data, dict):
            ctx.report((), "a rules file must be a mapping with `rules:` and/or `segments:`")
            continue
        for key in data:
            if key not in ("rules", "segments"):
                ctx.report((key,), f"unknown top-level key {key!r}: a rules file has `rules:` and `segments:`", True)
        parsed.append((ctx, data))
    return parsed


def _collect_segments(parsed: list[tuple[_FileContext, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    segments: dict[str, dict[str, Any]] = {}
    first_seen: dict[str, str] = {}
    for ctx, data in parsed:
        defined = data.get("segments") or {}
        if not isinstance(defined, dict):
            ctx.report(("segments",), "`segments:` must map segment names to conditions")
            continue
        for name, spec in defined.items():
            if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name != name.lower():
                ctx.report(("segments", name), f"segment name {name!r} must match [a-z0-9_]+", key=True)
                continue
            if name in first_seen:
                ctx.report(
                    ("segments", name),
                    f"duplicate segment {name!r} (first defined in {first_seen[name]})",
                    key=True,
                )
                continue
            condition = check_condition(spec, ("segments", name), ctx.report, None)
            first_seen[name] = ctx.name
            if condition is not None:
                segments[name] = condition
    return segments


def _check_lead_paths(ctx: _FileContext, model: schema.RuleBase, loc: tuple[Any, ...], what: str) -> None:
    matchers: list[tuple[tuple[Any, ...], schema.Matcher]] = [
        ((*loc, field), matcher)
        for field in ("when", "unless", "match", "exit_on", "entry", "goal")
        for matcher in getattr(model, field, None) or ()
    ]
    if isinstance(model, schema.JourneyRule):
        matchers += [
            ((*loc, "steps", i, "wait_for"), step.wait_for)
            for i, step in enumerate(model.steps)
            if step.wait_for is not None
        ]
    for where, matcher in matchers:
        for path in matcher.where or {}:
            if path.startswith("lead.") and path.split(".")[1] not in LEAD_ROOTS:
                ctx.report(
                    (*where, "where", path),
                    f"{what}: unknown lead path {path!r}; lead paths "
                    f"start with lead. and one of {', '.join(LEAD_ROOTS)}",
                    key=True,
                )


def _validate_rule(
    ctx: _FileContext,
    raw: Any,
    loc: tuple[Any, ...],
    segment_names: Collection[str],
    known_connectors: Collection[str],
    template_exists: TemplateCheck | None = None,
) -> tuple[schema.RuleBase, dict[str, Any] | None, BranchConditions] | None:
    if not isinstance(raw, dict):
        ctx.report(loc, "a rule must be a mapping with at least id, kind and action")
        return None
    what = f"rule {raw.get('id')!r}" if isinstance(raw.get("id"), str) else "rule"
    kind = raw.get("kind")
    model_cls = schema.RULE_MODELS.get(kind) if isinstance(kind, str) else None
    if model_cls is None:
        where = (*loc, "kind") if "kind" in raw else loc
        ctx.report(where, f"{what}: unknown or missing kind {kind!r}; use one of {', '.join(schema.KINDS)}")
        return None
    before = len(ctx.problems)
    _check_connectors(ctx, raw, loc, what, known_connectors, template_exists)
    condition = None
    if raw.get("if") is not None:

        def report(where: Sequence[Any], message: str) -> None:
            ctx.report(where, f"{what}: {message}")

        condition = check_condition(raw["if"], (*loc, "if"), report, segment_names)
    branches: BranchConditions | None = {}
    if kind == "journey":

        def branch_problem(where: Sequence[Any], message: str) -> None:
            ctx.report((*loc, *where), f"{what}: {message}")

        branches = check_branch_conditions(raw, branch_problem, segment_names)
    try:
        model = model_cls.model_validate(raw)
    except ValidationError as exc:
        ctx.report_validation(loc, exc, what)
        return None
    _check_lead_paths(ctx, model, loc, what)

    def structure_problem(where: Sequence[Any], message: str, key: bool) -> None:
        ctx.report((*loc, *where), f"{what}: {message}", key=key)

    check_rule_experiment(raw, model, structure_problem)
    if isinstance(model, schema.JourneyRule):
        check_journey(raw, model, structure_problem)
    if len(ctx.problems) > before or branches is None:
        return None
    return model, condition, branches


def _check_connectors(
    ctx: _FileContext,
    raw: dict[str, Any],
    loc: tuple[Any, ...],
    what: str,
    known: Collection[str],
    template_exists: TemplateCheck | None = None,
) -> None:
    blocks = [((*loc, "action"), raw.get("action"))]
    steps = raw.get("steps") if raw.get("kind") == "journey" else None
    if isinstance(steps, list):
        blocks = [
            ((*loc, "steps", i, "send"), step.get("send"))
            for i, step in enumerate(steps)
            if isinstance(step, dict) and "send" in step
        ]
    experiment = raw.get("experiment")
    variants = experiment.get("variants") if isinstance(experiment, dict) else None
    rule_action = raw.get("action")
    if not isinstance(rule_action, dict):
        rule_action = {}
    for i, variant in enumerate(variants if isinstance(variants, list) else ()):
        keys = variant.get("action") if isinstance(variant, dict) else None
        if isinstance(keys, dict) and ("connector" in keys or "template" in keys):
            merged: dict[str, Any] = {
                k: keys[k] if k in keys else rule_action.get(k) for k in ("connector", "template")
            }
            blocks.append(((*loc, "experiment", "variants", i, "action"), merged))
    thresholds = raw.get("thresholds")
    if isinstance(thresholds, list):
        blocks += [
            ((*loc, "thresholds", i, "action"), t.get("action"))
            for i, t in enumerate(thresholds)
            if isinstance(t, dict)
        ]
    for where, block in blocks:
        connector = block.get("connector") if isinstance(block, dict) else None
        if isinstance(connector, str) and connector not in known:
            hint = difflib.get_close_matches(connector, sorted(known), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            ctx.report(
                (*where, "connector"),
                f"{what}: unknown connector {connector!r}{suffix}; known connectors: {', '.join(sorted(known))}",
            )
        elif isinstance(connector, str) and isinstance(block, dict) and template_exists is not None:
            template = block.get("template")
            if (template is None or isinstance(template, str)) and not template_exists(connector, template):
                at = (*where, "template") if "template" in block else where
                ctx.report(
                    at,
                    f"{what}: connector {connector!r} has no template {template or 'default'!r} (looked in the "
                    "connectors file's templates_dir and the built-in templates)",
                )


def load_rules(
    paths: Sequence[str | Path],
    known_connectors: Collection[str] | None = None,
    template_exists: TemplateCheck | None = None,
) -> RuleSet:
    """Read, validate and compile rule files into one immutable `RuleSet`.

    - `paths` are files or directories. A directory contributes its `*.yaml` / `*.yml` files (not recursive),
      sorted by name; rule test files (`*.test.yaml`, `*.test.yml`) are skipped. Files load in the given order.
    - A rules file is a mapping with `rules:` (a list of rules) and/or `segments:` (name → condition). Segments
      are global across the loaded files.
    - All problems of all files are collected (unknown key, bad duration, unknown connector, duplicate id, bad
      predicate, unknown segment, YAML syntax...) and raised together as `RuleFileError`, each
      `file:line:col: message`. Nothing is half-loaded.
    - `known_connectors`: the connector names an `action:` may use (default `DEFAULT_CONNECTORS`); with
      `template_exists(connector, template)` (from the connectors file), an action naming a template its
      connector cannot render is a problem too.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    problems: list[Problem] = []
    sources = _read_files(rule_files(paths), problems)
    return _build(sources, problems, known_connectors, template_exists)


def parse_rules(
    text: str,
    name: str = "<rules>",
    known_connectors: Collection[str] | None = None,
    template_exists: TemplateCheck | None = None,
) -> RuleSet:
    """`load_rules` for one rules document given as text (tests, embedding); `name` appears in problems."""
    return _build([(name, text)], [], known_connectors, template_exists)


def _build(
    sources: list[tuple[str, str]],
    problems: list[Problem],
    known_connectors: Collection[str] | None,
    template_exists: TemplateCheck | None = None,
) -> RuleSet:
    connectors = frozenset(known_connectors) if known_connectors is not None else DEFAULT_CONNECTORS
    parsed = _parse_sources(sources, problems)
    segments = _collect_segments(parsed)
    compiled_segments = {name: compile_condition(spec) for name, spec in segments.items()}
    rules: list[Rule] = []
    ids: dict[str, str] = {}
    experiment_ids: dict[str, str] = {}
    for ctx, data in parsed:
        listed = data.get("rules") or []
        if not isinstance(listed, list):
            ctx.report(("rules",), "`rules:` must be a list of rules")
            continue
        for index, raw in enumerate(listed):
            loc = ("rules", index)
            rule_id = raw.get("id") if isinstance(raw, dict) else None
            first = ids.get(rule_id) if isinstance(rule_id, str) else None
            duplicate = first is not None
            if duplicate:
                ctx.report(
                    (*loc, "id"),
                    f"duplicate rule id {rule_id!r} (first defined at {first}); "
                    "rule ids must be unique across all loaded files",
                )
            result = _validate_rule(ctx, raw, loc, segments, connectors, template_exists)
            if isinstance(rule_id, str) and not duplicate:
                line, _ = locate(ctx.root, loc)
                ids[rule_id] = f"{ctx.name}:{line}"
            if result is None or duplicate:
                continue
            model, condition, branches = result
            rule = compile_rule(model, condition, segments, compiled_segments, ids[model.id], branches)
            for experiment in rule.experiments:
                first_use = experiment_ids.get(experiment.id)
                if first_use is not None:
                    where = (*loc, "experiment") if rule.experiment is experiment else (*loc, "steps")
                    ctx.report(
                        where,
                        f"rule {rule.id!r}: experiment id {experiment.id!r} is already used by {first_use}; "
                        "experiment ids must be unique (give `id:` another name)",
                        key=True,
                    )
                else:
                    experiment_ids[experiment.id] = f"rule {rule.id!r} ({ids[model.id]})"
            rules.append(rule)
    if problems:
        raise RuleFileError(sorted(problems, key=lambda p: (p.file, p.line, p.col)))
    return RuleSet.of(rules)
