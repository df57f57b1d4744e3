"""YAML loading that remembers where every value came from, so errors can point at `file:line:col`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


class YamlProblem(ValueError):
    """A YAML document that cannot be read, at a 1-based `line` and `col`."""

    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line, self.col, self.message = line, col, message


class _Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps: `2026-01-01T10:00:00Z` stays the string it looks like."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check_duplicates(node: yaml.Node) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                first = seen[key].start_mark
                raise YamlProblem(
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                    f"duplicate key {key!r} (first defined at line {first.line + 1}); remove one of them",
                )
            seen[key] = key_node
            _check_duplicates(value_node)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item)


def load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """`(root node, data)`: `data` is what `yaml.safe_load` would return, except that unquoted timestamps stay
    strings (event times in rule tests must not become naive datetimes). Duplicate keys in a mapping and YAML
    syntax errors raise `YamlProblem`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_duplicates(node)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlProblem(line, col, f"YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, 1, f"YAML error: {exc}") from None
    finally:
        loader.dispose()


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def locate(node: yaml.Node | None, loc: Sequence[Any], key: bool = False) -> tuple[int, int]:
    """The 1-based `(line, col)` of the deepest node a pydantic-style location (keys and list indexes) reaches
    (of the key itself when `key=True`). Steps that do not exist in the YAML (pydantic's union tags, an index
    into a single matcher written as a mapping) are skipped."""
    if node is None:
        return 1, 1
    current = node
    for i, step in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, yaml.MappingNode):
            found = next(
                ((k, v) for k, v in current.value if isinstance(k, yaml.ScalarNode) and k.value == str(step)),
                None,
            )
            if found is None:
                continue
            if last and key:
                return _position(found[0])
            current = found[1]
        elif isinstance(current, yaml.SequenceNode) and isinstance(step, int):
            current = current.value[step] if 0 <= step < len(current.value) else current
    return _position(current)
