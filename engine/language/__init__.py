"""The rule language: YAML rule files → a validated, compiled, immutable `engine.core.RuleSet` (schema, loader
with line/column problems, compiler to the core's structures, rule test cases). Reference: docs/rules.md.

May import: `engine.core` (and `engine.events`), pydantic, yaml, orjson and the standard library; nothing of
the shell (tests/test_architecture.py checks it).
"""

from engine.core.ruleset import Rule, RuleSet
from engine.language.loader import DEFAULT_CONNECTORS, load_rules, parse_rules, rule_files
from engine.language.problems import Problem, RuleFileError

__all__ = [
    "DEFAULT_CONNECTORS",
    "Problem",
    "Rule",
    "RuleFileError",
    "RuleSet",
    "load_rules",
    "parse_rules",
    "rule_files",
]
