"""Every YAML example in README.md and docs/*.md goes through the loader it documents, so the docs cannot drift.

A fenced block whose language is `yaml` or `yml` is checked by its top-level keys:
- `cases:`: a rule test file, run with `run_test_file` against the shipped `rules/` pack; every case must pass.
- `rules:` and/or `segments:`: a rules file, through `engine.language.parse_rules` (built-in connector names).
- `connectors:`, `defaults:`, `policies:`, `dispatcher:`: a connectors file, through
  `engine.dispatch.config.parse_connectors`. Every `${VAR}` the block names is given a placeholder value: such
  examples show that a variable is required, not what it holds.
- `reps:`: a sales reps roster, through `engine.assignment.roster.parse_roster`.
Examples are written as complete documents (a single rule sits in a `rules:` list); nothing is wrapped here.
Any other YAML block fails the test unless the line right before its fence is `<!-- not-checked: REASON -->`
with a reason, so that no example is skipped silently. Blocks in other languages (```text, ```python) are prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from engine.assignment.roster import parse_roster
from engine.dispatch.config import parse_connectors
from engine.language import load_rules, parse_rules
from engine.language.testcases import run_test_file

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [ROOT / "README.md", *PAGES]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
NOT_CHECKED = re.compile(r"^\s*<!--\s*not-checked:\s*(?P<reason>.*?)\s*-->\s*$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
CONNECTORS_KEYS = {"connectors", "defaults", "policies", "dispatcher", "templates_dir"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_checked: str | None  # the reason given in a `<!-- not-checked: ... -->` marker, if any

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        marker = NOT_CHECKED.match(lines[i - 1]) if i > 0 else None
        text = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(path, i + 1, opening["lang"].lower(), text, marker["reason"] if marker else None))
        i = end + 1
    return blocks


YAML_BLOCKS = [block for doc in DOCUMENTS for block in fenced_blocks(doc) if block.lang in ("yaml", "yml")]


def kind_of(data: object) -> str:
    if not isinstance(data, dict):
        return "unknown"
    keys = set(data)
    if "cases" in keys:
        return "rule tests"
    if keys & {"rules", "segments"}:
        return "rules"
    if keys & CONNECTORS_KEYS:
        return "connectors"
    if "reps" in keys:
        return "roster"
    return "unknown"


@pytest.fixture(scope="module")
def shipped_rules():  # type: ignore[no-untyped-def]
    return load_rules([ROOT / "rules"])


def test_the_docs_have_yaml_examples() -> None:
    assert len(YAML_BLOCKS) >= 5, "expected the reference pages to carry YAML examples"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[block.where for block in YAML_BLOCKS])
def test_yaml_example_loads(block: Block, shipped_rules, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if block.not_checked is not None:
        assert block.not_checked, f"{block.where}: `<!-- not-checked: REASON -->` needs a reason"
        return
    data = yaml.safe_load(block.text)
    kind = kind_of(data)
    source = block.where
    if kind == "rule tests":
        test_file = tmp_path / "example.test.yaml"
        test_file.write_text(block.text, encoding="utf-8")
        results = run_test_file(test_file, shipped_rules)
        assert results, f"{source}: no test case"
        failed = [str(result) for result in results if not result.passed]
        assert not failed, f"{source}: rule test example fails against rules/:\n" + "\n".join(failed)
    elif kind == "rules":
        ruleset = parse_rules(block.text, name=source)
        assert ruleset.rules or "segments" in data, f"{source}: a rules example without rules"
    elif kind == "connectors":
        env = {name: "placeholder" for name in VARIABLE.findall(block.text)}
        parse_connectors(block.text, env=env, source=source, base_dir=ROOT)
    elif kind == "roster":
        assert parse_roster(block.text, source).reps, f"{source}: a roster example without reps"
    else:
        pytest.fail(
            f"{source}: a YAML block that is neither rules, rule tests, connectors nor a roster; make it one of "
            "those, or put `<!-- not-checked: REASON -->` on the line before its fence"
        )


def test_fence_parser_sees_markers_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- not-checked: an alert rule -->\n```yaml\na: 1\n```\n\n```text\nb\n```\n```yml\nrules: []\n```\n",
        encoding="utf-8",
    )
    blocks = fenced_blocks(page)
    assert [(b.line, b.lang, b.not_checked) for b in blocks] == [
        (3, "yaml", "an alert rule"),
        (7, "text", None),
        (10, "yml", None),
    ]
    assert blocks[0].text == "a: 1\n"
    assert kind_of(yaml.safe_load(blocks[2].text)) == "rules"
    assert kind_of({"reps": []}) == "roster"
    assert kind_of({"policies": {}}) == "connectors"
    assert kind_of({"cases": [], "rules": ["x"]}) == "rule tests"
    assert kind_of({"groups": []}) == "unknown"
