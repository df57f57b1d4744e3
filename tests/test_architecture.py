"""The import direction of the code map (README "Code map", each package's `__init__` docstring), enforced by
parsing the imports of every module under engine/ and connectors/: the pure core at the bottom, the shells around
it, the commands on top. Complements tests/core/test_purity.py, which imports the core and checks what it loads;
ruff's SLF001 checks private attribute access (allowed only under engine/worker/faust_ext/).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("engine", "connectors")

# What each package may import from engine/ and connectors/ (the most specific prefix applies). Packages not
# listed (engine.commands, engine.cli, engine.demo, engine.__main__) may import any package.
INTERNAL = {
    "engine.events": (),
    "engine.config": (),
    "engine.metrics": (),
    "engine.devstack": (),
    "engine.redis_claims": (),
    "engine.unsubscribe_links": (),
    "engine.testing": ("engine.config",),
    "engine.core": ("engine.core", "engine.events"),
    "engine.language": ("engine.language", "engine.core", "engine.events", "engine.config"),
    "engine.kafka": ("engine.kafka", "engine.config"),
    "engine.worker": (
        "engine.worker",
        "engine.core",
        "engine.events",
        "engine.kafka",
        "engine.config",
        "engine.metrics",
        "engine.privacy.records",
    ),
    # `engine.worker.input_positions` is pure bookkeeping (no Faust) that the batched input applies;
    # `engine.worker.gc_tuning` (stdlib only) pauses the garbage collector for the recovery read-ahead.
    "engine.worker.faust_ext": (
        "engine.worker.faust_ext",
        "engine.worker.input_positions",
        "engine.worker.gc_tuning",
        "engine.config",
        "engine.kafka",
        "engine.metrics",
    ),
    "engine.dispatch": (
        "engine.dispatch",
        "connectors",
        "engine.assignment",
        "engine.kafka",
        "engine.redis_claims",
        "engine.core",
        "engine.config",
        "engine.metrics",
    ),
    "engine.dispatch.policies": (
        "engine.dispatch.policies",
        "connectors",
        "engine.redis_claims",
        "engine.core",
        "engine.config",
        "engine.metrics",
    ),
    "connectors": ("connectors", "engine.core", "engine.events", "engine.config", "engine.unsubscribe_links"),
    # The kafka connector's default producer connects to the engine's own broker with its TLS/SASL settings.
    "connectors.kafka": ("connectors", "engine.core", "engine.events", "engine.config", "engine.kafka.security"),
    # Experiment statistics: pure, the standard library only.
    "engine.experiments": ("engine.experiments",),
    "engine.clickhouse": (
        "engine.clickhouse",
        "engine.experiments",
        "engine.core",
        "engine.events",
        "engine.kafka",
        "engine.config",
        "engine.metrics",
        "engine.privacy.records",
    ),
    # The privacy pipeline reads the key layouts of every process that keeps a lead's data (docs/privacy.md).
    "engine.privacy": (
        "engine.privacy",
        "engine.collector.identity",
        "engine.collector.trust",
        "engine.dispatch",
        "engine.assignment.store",
        "engine.clickhouse",
        "engine.core",
        "engine.language",
        "engine.events",
        "engine.kafka",
        "engine.config",
        "engine.metrics",
    ),
    # Its records are read by the worker and the sink: standard library and orjson only.
    "engine.privacy.records": (),
    # The collector's regulation endpoint accepts requests through the privacy package and hosts its coordinator.
    "engine.collector.regulations": (
        "engine.collector",
        "engine.privacy",
        "engine.events",
        "engine.kafka",
        "engine.config",
        "engine.metrics",
    ),
    "engine.collector": (
        "engine.collector",
        "engine.events",
        "engine.kafka",
        "engine.redis_claims",
        "engine.unsubscribe_links",
        "engine.config",
        "engine.metrics",
    ),
    "engine.assignment": (
        "engine.assignment",
        "engine.core",
        "engine.events",
        "engine.kafka",
        "engine.config",
        "engine.metrics",
    ),
}

# Third-party libraries the pure layers may use besides the standard library. orjson is the core's own
# serialisation; the rule language hashes canonical rule JSON with it too.
THIRD_PARTY = {
    "engine.events": ("orjson",),
    "engine.core": ("orjson",),
    "engine.language": ("orjson", "pydantic", "yaml"),
    "engine.privacy.records": ("orjson",),
    "engine.experiments": (),
}

# Faust and its service library belong to the worker shell (and `nudge worker`, which starts a `faust.Worker`).
FAUST = ("faust", "mode")
FAUST_USERS = ("engine.worker", "engine.commands")
# The same list as tests/core/test_purity.py, which checks what importing the core loads at run time.
IO_LIBRARIES = ("faust", "aiokafka", "redis", "clickhouse_connect", "chdb", "pydantic", "yaml", "mode")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            yield _module_name(path), path, ast.parse(path.read_text(), filename=str(path))


def _imports() -> list[Import]:
    found = []
    for module, path, tree in _modules():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [Import(module, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the importing package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append(Import(module, base, node.lineno))
                # `from engine import metrics` imports the module engine.metrics.
                found += [Import(module, f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


IMPORTS = _imports()
INTERNAL_ROOTS = ("engine", "connectors")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule(module: str, table: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    matches = [prefix for prefix in table if _within(module, prefix)]
    return table[max(matches, key=len)] if matches else None


def _internal_target(target: str) -> bool:
    return target.split(".")[0] in INTERNAL_ROOTS and target not in INTERNAL_ROOTS


def _is_module(target: str) -> bool:
    """`from engine.kafka.topics import ACTIONS` also yields `engine.kafka.topics.ACTIONS`: keep real modules."""
    path = ROOT.joinpath(*target.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _where(imp: Import) -> str:
    return f"{imp.module}:{imp.line} imports {imp.target}"


def test_the_modules_are_found() -> None:
    modules = {imp.module for imp in IMPORTS}
    assert {
        "engine.core.evaluate",
        "engine.worker.lead_worker",
        "connectors.base",
        "engine.dispatch.dispatcher",
    } <= modules


def test_packages_import_only_what_the_code_map_allows() -> None:
    wrong = []
    for imp in IMPORTS:
        allowed = _rule(imp.module, INTERNAL)
        if allowed is None or not _internal_target(imp.target) or not _is_module(imp.target):
            continue
        if not any(_within(imp.target, prefix) for prefix in allowed):
            wrong.append(f"{_where(imp)}; allowed: {', '.join(allowed) or 'nothing of engine/connectors'}")
    assert not wrong, "imports against the direction of the code map:\n" + "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(THIRD_PARTY))
def test_pure_layers_use_only_the_standard_library_and_their_few_libraries(package: str) -> None:
    allowed = THIRD_PARTY[package]
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if _within(imp.module, package)
        and not _internal_target(imp.target)
        and imp.target.split(".")[0] not in (*INTERNAL_ROOTS, "__future__", *allowed)
        and imp.target.split(".")[0] not in sys.stdlib_module_names
    ]
    assert not wrong, f"{package} may import the standard library and {', '.join(allowed)} only:\n" + "\n".join(wrong)


def test_the_core_imports_no_io_library() -> None:
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if _within(imp.module, "engine.core") and imp.target.split(".")[0] in IO_LIBRARIES
    ]
    assert not wrong, "\n".join(wrong)


def test_connectors_import_neither_the_dispatcher_nor_the_worker_nor_the_sink() -> None:
    shells = ("engine.dispatch", "engine.worker", "engine.clickhouse")
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if _within(imp.module, "connectors") and any(_within(imp.target, shell) for shell in shells)
    ]
    assert not wrong, "\n".join(wrong)


def test_kafka_imports_nothing_of_the_worker_or_the_dispatcher() -> None:
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if _within(imp.module, "engine.kafka")
        and any(_within(imp.target, shell) for shell in ("engine.worker", "engine.dispatch"))
    ]
    assert not wrong, "\n".join(wrong)


def test_faust_is_imported_only_by_the_worker_shell() -> None:
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if imp.target.split(".")[0] in FAUST and not any(_within(imp.module, user) for user in FAUST_USERS)
    ]
    assert not wrong, "\n".join(wrong)


def test_faust_ext_is_used_only_by_the_worker_and_its_command() -> None:
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if _within(imp.target, "engine.worker.faust_ext")
        and not any(_within(imp.module, user) for user in ("engine.worker", "engine.commands"))
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("package", "importers"), [("engine.commands", ("engine.cli",)), ("engine.demo", ("engine.commands",))]
)
def test_the_top_layer_is_imported_by_nothing_below_it(package: str, importers: tuple[str, ...]) -> None:
    wrong = [
        _where(imp)
        for imp in IMPORTS
        if _within(imp.target, package) and not any(_within(imp.module, user) for user in (package, *importers))
    ]
    assert not wrong, "\n".join(wrong)


def test_private_names_are_not_reached_by_string_outside_faust_ext() -> None:
    """ruff's SLF001 sees `obj._name`; this sees `getattr(obj, "_name")` and friends, which would bypass it."""
    wrong = []
    for module, _path, tree in _modules():
        if _within(module, "engine.worker.faust_ext"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and node.args[1].value.startswith("_")
                and not node.args[1].value.startswith("__")
            ):
                wrong.append(f"{module}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not wrong, "private attributes by name belong in engine/worker/faust_ext:\n" + "\n".join(wrong)
