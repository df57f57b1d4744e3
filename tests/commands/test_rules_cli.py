"""`nudge rules validate` and `nudge rules test`: exit codes and one line per problem / case."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]
RULE = "rules:\n  - {id: a, kind: absence, when: {event: A}, within: 10m, action: {connector: log}}\n"


def test_validate_accepts_the_shipped_pack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", str(REPO / "rules")]) == 0
    assert capsys.readouterr().out == ""


def test_validate_prints_one_line_per_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n"
        "  - id: a\n"
        "    kind: absence\n"
        "    when: {event: A, colour: red}\n"
        "    within: 30x\n"
        "    action: {connector: fax}\n"
        "  - {id: a, kind: threshold, match: {type: page}, count: 2, within: 1m, action: {connector: log}}\n"
    )
    assert main(["rules", "validate", str(bad), str(tmp_path / "missing.yaml")]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'missing.yaml'}:1:1: no such file or directory"
    assert [line.split(": ", 1)[0] for line in lines[1:]] == [
        f"{bad}:4:22",  # unknown key
        f"{bad}:5:13",  # bad duration
        f"{bad}:6:25",  # unknown connector
        f"{bad}:7:10",  # duplicate id
    ]


def test_rules_test_runs_the_shipped_cases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test", str(REPO / "rules")]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   ") >= 10 and "FAIL" not in out


def test_rules_test_reports_a_failing_case_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(
        RULE + "  - {id: b, kind: absence, when: {event: B}, within: 1m, action: {connector: log}}\n"
    )
    (tmp_path / "a.test.yaml").write_text(
        "cases:\n"
        "  - name: fires after ten minutes\n"
        "    events: [{type: track, event: A, userId: u, messageId: m, timestamp: '2026-01-05T10:00:00Z'}]\n"
        "    expect: [{rule: a, fired_at: '2026-01-05T10:10:00Z', trigger: [m]}]\n"
        "  - name: wrong expectation\n"
        "    events: [{type: track, event: A, userId: u, timestamp: '2026-01-05T10:00:00Z'}]\n"
        "    expect: [{rule: a, fired_at: '2026-01-05T10:11:00Z'}]\n"
    )
    assert main(["rules", "test", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert f"ok   {tmp_path / 'a.test.yaml'}:2: fires after ten minutes" in out
    assert f"FAIL {tmp_path / 'a.test.yaml'}:5: wrong expectation" in out
    assert "fired_at: expected 2026-01-05T10:11:00Z, got 2026-01-05T10:10:00.000Z" in out
    assert "no test case in" in err and "expects an action of: b" in err


def test_rules_test_rejects_an_invalid_test_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(RULE)
    (tmp_path / "a.test.yaml").write_text("rules: [nope]\ncases:\n  - {name: x, events: [], expect: [], colour: 1}\n")
    assert main(["rules", "test", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"{tmp_path / 'a.test.yaml'}:1:8: unknown rule 'nope'" in out
    assert "unknown key 'colour' in a test case" in out


CONNECTORS = """
connectors:
  email_eu: {type: email, host: smtp.eu.example, from_address: shop@eu.example, security: none}
  email_us: {type: email, host: smtp.us.example, from_address: shop@us.example, security: none}
  ops_hook: {type: webhook, url: "${OPS_HOOK_URL}", secret: "${OPS_HOOK_SECRET}"}
"""


def test_validate_checks_connector_names_and_templates_against_the_connectors_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(CONNECTORS)  # secrets unset: validation does not need them
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {id: eu, kind: absence, when: {event: A}, within: 1m, action: {connector: email_eu, template: welcome}}\n"
        "  - {id: us, kind: absence, when: {event: A}, within: 1m, action: {connector: email_us, template: welcom}}\n"
        "  - {id: ops, kind: absence, when: {event: A}, within: 1m, action: {connector: ops_hook}}\n"
        "  - {id: old, kind: absence, when: {event: A}, within: 1m, action: {connector: email}}\n"
    )
    assert main(["rules", "validate", str(rules), "--connectors", str(connectors)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{rules}:3:99: rule 'us': connector 'email_us' has no template 'welcom' (looked in the connectors file's "
        "templates_dir and the built-in templates)",
        f"{rules}:5:80: rule 'old': unknown connector 'email' (did you mean 'email_us'?); known connectors: "
        "email_eu, email_us, ops_hook",
    ]
    assert main(["rules", "validate", str(connectors), "--connectors", str(tmp_path / "missing.yaml")]) == 2


def test_deploy_refuses_what_validate_refuses_with_the_same_lines_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No broker at this address: a deploy that got past validation would fail with exit 1, not 2.
    monkeypatch.setenv("NUDGE_BROKER_URL", "kafka://127.0.0.1:9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: a, kind: absence, when: {event: A}, within: soon, action: {connector: log}}\n")
    assert main(["rules", "validate", str(bad), str(tmp_path / "missing.yaml")]) == 2
    validate_lines = capsys.readouterr().out
    assert main(["rules", "deploy", str(bad), str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().out == validate_lines
    assert f"{bad}:2:" in validate_lines
