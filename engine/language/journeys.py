"""The structure of a `kind: journey` rule, checked after its schema: one kind per step, unique and known step ids,
`then`/`else` only on `wait_for`, every step reachable, no loop that can run without passing a wait, branch
conditions, and the rule options a journey does not take. Problems point at the offending key."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Sequence
from typing import Any

from engine.language import schema
from engine.language.conditions import check_condition
from engine.language.experiments import check_variants

# (location below the rule, message, whether to point at the key rather than its value)
Report = Callable[[Sequence[Any], str, bool], None]
# (step index, branch entry index) -> the entry's condition, validated and normalised
BranchConditions = dict[tuple[int, int], dict[str, Any]]

NOT_FOR_JOURNEYS = {
    "action": "a journey sends from its steps (`send:`); remove the rule-level `action:`",
    "cooldown": "`cooldown` does not apply to a journey: its sends are paced by its steps (`wait:`, `wait_for:`)",
    "max_per_lead": "`max_per_lead` does not apply to a journey: use `re_entry: never` for one entry per lead",
    "per": "`per` does not apply to a journey (it has no `max_per_lead`)",
}


def successors(step: schema.JourneyStep, following: str | None) -> list[str | None]:
    """Where a step can lead (None: off the end); `following` is the id of the step after it in the list."""
    if step.send is not None or step.wait is not None:
        return [following]
    if step.wait_for is not None:
        return [step.then or following, step.else_ or following]
    if step.branch is not None:
        targets: list[str | None] = [entry.goto for entry in step.branch]
        if step.branch[-1].if_ is not None:  # no default entry: the next step
            targets.append(following)
        return targets
    if step.goto is not None:
        return [step.goto]
    if step.split is not None:  # the holdout arm without holdout_goto leaves the journey
        return [v.goto for v in step.split.variants if v.goto is not None] + [step.split.holdout_goto]
    return []  # end


def check_branch_conditions(
    raw: dict[str, Any], report: Callable[[Sequence[Any], str], None], segments: Collection[str]
) -> BranchConditions | None:
    """The `if:` of every branch entry of a journey as written (before its schema is checked, so that their
    problems are reported with the others), validated and normalised; None when one is invalid."""
    conditions: BranchConditions = {}
    ok = True
    steps = raw.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else ()):
        branch = step.get("branch") if isinstance(step, dict) else None
        for j, entry in enumerate(branch if isinstance(branch, list) else ()):
            if isinstance(entry, dict) and entry.get("if") is not None:
                checked = check_condition(entry["if"], ("steps", i, "branch", j, "if"), report, segments)
                if checked is None:
                    ok = False
                else:
                    conditions[(i, j)] = checked
    return conditions if ok else None


def check_journey(raw: dict[str, Any], model: schema.JourneyRule, report: Report) -> bool:
    """Whether the journey's structure is valid; every problem found is reported."""
    problems = 0

    def problem(where: Sequence[Any], message: str, key: bool = False) -> None:
        nonlocal problems
        problems += 1
        report(where, message, key)

    for option, message in NOT_FOR_JOURNEYS.items():
        if option in raw:
            problem((option,), message, True)
    steps = model.steps
    ids = [step.id for step in steps]
    first_index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in first_index:
            problem(
                ("steps", i, "id"), f"duplicate step id {step.id!r} (first used by step {first_index[step.id] + 1})"
            )
        else:
            first_index[step.id] = i
    for i, step in enumerate(steps):
        kinds = step.kinds
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            problem(
                ("steps", i, kinds[1]) if len(kinds) > 1 else ("steps", i),
                f"step {step.id!r} needs exactly one of {', '.join(schema.STEP_KINDS)} (found: {found})",
                len(kinds) > 1,
            )
        for name, value in (("then", step.then), ("else", step.else_)):
            if value is not None and step.wait_for is None:
                kind = kinds[0] if kinds else "step without a kind"
                problem(
                    ("steps", i, name),
                    f"`{name}:` belongs to a wait_for step; step {step.id!r} is a {kind} step "
                    "(to jump elsewhere, add a `goto:` step)",
                    True,
                )
        if step.split is not None:
            check_variants(step.split.variants, ("steps", i, "split"), problem, in_split=True)
        for j, entry in enumerate(step.branch or ()):
            if entry.if_ is None and j != len(step.branch or ()) - 1:
                problem(("steps", i, "branch", j), "a branch entry without `if:` is the default and must come last")
        for where, target in _targets(step, i):
            if target not in first_index:
                hint = difflib.get_close_matches(target, ids, n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                problem(where, f"unknown step {target!r}{suffix}; steps: {', '.join(dict.fromkeys(ids))}")
    if not any(step.send is not None for step in steps):
        problem(("steps",), "a journey needs at least one `send:` step")
    if problems:
        return False
    graph = _graph(steps)
    for i in _unreachable(graph):
        problem(("steps", i, "id"), f"step {steps[i].id!r} can never be reached: no step leads to it")
    for cycle in _loops_without_wait(steps, graph):
        path = " -> ".join(steps[k].id for k in [*cycle, cycle[0]])
        problem(
            ("steps", cycle[0], "id"),
            f"steps {path} loop without passing a wait (it would send forever); "
            "put a `wait:` or `wait_for:` step in the loop",
        )
    return not problems


def _targets(step: schema.JourneyStep, i: int) -> list[tuple[tuple[Any, ...], str]]:
    named: list[tuple[tuple[Any, ...], str]] = []
    if step.then is not None:
        named.append((("steps", i, "then"), step.then))
    if step.else_ is not None:
        named.append((("steps", i, "else"), step.else_))
    if step.goto is not None:
        named.append((("steps", i, "goto"), step.goto))
    for j, entry in enumerate(step.branch or ()):
        named.append((("steps", i, "branch", j, "goto"), entry.goto))
    if step.split is not None:
        if step.split.holdout_goto is not None:
            named.append((("steps", i, "split", "holdout_goto"), step.split.holdout_goto))
        for j, variant in enumerate(step.split.variants):
            if variant.goto is not None:
                named.append((("steps", i, "split", "variants", j, "goto"), variant.goto))
    return named


def _graph(steps: list[schema.JourneyStep]) -> list[list[int]]:
    """Step index -> the indexes it can lead to (running off the end leads nowhere)."""
    index = {step.id: i for i, step in enumerate(steps)}
    graph = []
    for i, step in enumerate(steps):
        following = steps[i + 1].id if i + 1 < len(steps) else None
        graph.append(sorted({index[t] for t in successors(step, following) if t is not None}))
    return graph


def _unreachable(graph: list[list[int]]) -> list[int]:
    seen, todo = {0}, [0]
    while todo:
        for j in graph[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return [i for i in range(len(graph)) if i not in seen]


def _loops_without_wait(steps: list[schema.JourneyStep], graph: list[list[int]]) -> list[list[int]]:
    """One cycle per group of steps that can loop among themselves without a `wait`/`wait_for` step."""
    moving = [step.wait is None and step.wait_for is None for step in steps]
    inner = [[j for j in graph[i] if moving[j]] if moving[i] else [] for i in range(len(steps))]
    reach = [_reachable_from(inner, i) for i in range(len(steps))]
    cycles: list[list[int]] = []
    covered: set[int] = set()
    for i in range(len(steps)):
        if i in covered or i not in reach[i]:
            continue
        covered.update(j for j in reach[i] if i in reach[j])
        cycles.append(_path_back(inner, i))
    return cycles


def _reachable_from(graph: list[list[int]], start: int) -> set[int]:
    seen: set[int] = set()
    todo = list(graph[start])
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(graph[j])
    return seen


def _path_back(graph: list[list[int]], start: int) -> list[int]:
    """A shortest cycle through `start` (breadth first), as the list of its steps from `start`."""
    parent: dict[int, int] = {}
    frontier = [start]
    while frontier:
        following = []
        for i in frontier:
            for j in graph[i]:
                if j == start:
                    path = [i]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                if j not in parent:
                    parent[j] = i
                    following.append(j)
        frontier = following
    return [start]
