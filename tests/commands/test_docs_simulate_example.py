"""The worked `nudge simulate` example of docs/rules.md ("Journeys") gives the documented output: the rules, events,
command and outputs are read from the page (the blocks after `<!-- simulate-example: NAME -->` markers), so the
page cannot drift from what the command prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson
import pytest

from engine.cli import main

PAGE = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
MARKER = re.compile(r"^<!-- simulate-example: (?P<name>[a-z]+) -->$")


def example_blocks() -> dict[str, str]:
    """The fenced block right after each `<!-- simulate-example: NAME -->` marker, by NAME."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    blocks: dict[str, str] = {}
    for i, line in enumerate(lines):
        found = MARKER.match(line)
        if not found:
            continue
        assert lines[i + 1].startswith("```"), f"docs/rules.md:{i + 2}: a fence must follow the marker"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        blocks[found["name"]] = "\n".join(lines[i + 2 : end]) + "\n"
    return blocks


def projected(stdout: str, fields: list[str]) -> str:
    """What `jq -c '{a, b}'` prints for each line."""
    out = []
    for line in stdout.splitlines():
        action = orjson.loads(line)
        out.append(orjson.dumps({name: action.get(name) for name in fields}).decode())
    return "\n".join(out) + "\n"


def test_the_documented_journey_example_gives_the_documented_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = example_blocks()
    assert set(blocks) == {"rules", "events", "command", "stdout", "stderr"}
    command = blocks["command"].strip().removeprefix("$ ")
    nudge, jq = (part.strip() for part in command.split("|"))
    argv = shlex.split(nudge)
    assert argv[:2] == ["nudge", "simulate"]
    fields = [name.strip() for name in shlex.split(jq)[2].strip("{}").split(",")]
    assert shlex.split(jq)[:2] == ["jq", "-c"]
    rules_file = argv[argv.index("--rules") + 1]
    events_file = argv[argv.index("--events") + 1]
    (tmp_path / rules_file).write_text(blocks["rules"], encoding="utf-8")
    (tmp_path / events_file).write_text(blocks["events"], encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert main(argv[1:]) == 0
    out, err = capsys.readouterr()
    assert projected(out, fields) == blocks["stdout"]
    assert "\n".join(line for line in err.splitlines() if line.startswith("journey: ")) + "\n" == blocks["stderr"]

    # "With `--no-flush` only u2's two actions are printed"
    assert main([*argv[1:], "--no-flush"]) == 0
    out, _ = capsys.readouterr()
    assert projected(out, fields).splitlines() == [line for line in blocks["stdout"].splitlines() if '"u2"' in line]
