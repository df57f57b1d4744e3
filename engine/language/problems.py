"""Validation problems with a position in a rule file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One problem; `str()` is `file:line:col: message` (1-based line and column), the format editors and CI
    understand. Problems order by file, then position."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class RuleFileError(ValueError):
    """One or more rule files are invalid; nothing was loaded. `problems` lists every problem found in one load
    (not just the first)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in rule files:\n{lines}")
