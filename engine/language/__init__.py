"""The rule language: YAML files → a validated, compiled, immutable `RuleSet` (README: "Rule language")."""

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
