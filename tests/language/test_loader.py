"""Rule files: validation problems point at file:line:col; valid files compile with stable versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.durations import format_duration, parse_duration
from engine.language import Problem, RuleFileError, load_rules, parse_rules

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"


def problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, "r.yaml", **kwargs)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def test_the_shipped_pack_loads_with_every_kind_it_needs() -> None:
    pack = load_rules([REPO_RULES])
    kinds = {r.id: r.kind for r in pack.rules}
    assert kinds["cart_abandoned"] == "absence" and kinds["pricing_hot_lead"] == "threshold"
    assert kinds["lead_score"] == "score"
    assert len({r.version for r in pack.rules}) == len(pack.rules) and pack.version


def test_the_issue_example_validates() -> None:
    ruleset = parse_rules(
        """
rules:
  - id: cart_abandoned            # unique, [a-z0-9_]+
    kind: absence
    when:   {event: "Product Added"}
    unless: {event: "Order Completed"}
    within: 30m
    action: {connector: email, template: cart_reminder}
  - id: pricing_hot_lead
    kind: threshold
    match: {type: page, where: {"properties.path": {prefix: "/pricing"}}}
    count: 3
    within: 10m
    cooldown: 1h
    action: {connector: slack}
"""
    )
    assert [r.connector for r in ruleset.rules] == ["email", "slack"]


def test_unknown_key_points_at_the_key_and_suggests_the_right_one() -> None:
    text = "\n".join(["rules:", "  - id: a", "    kind: absence", "    when: {evnt: X}", "    within: 5m"])
    text += "\n    action: {connector: x}\n"
    assert problems(text, known_connectors={"x"}) == [
        "r.yaml:4:12: rule 'a': unknown key 'evnt' (did you mean 'event'?)"
    ]


def test_bad_duration_unknown_connector_and_bad_predicate_are_all_reported_at_once() -> None:
    text = """rules:
  - id: a
    kind: threshold
    match: {type: page, where: {properties.n: {gt: [1]}, properties.p: {prefx: x}}}
    count: 2
    within: 10 minutes
    action: {connector: emial}
"""
    found = problems(text)
    assert found[0].startswith("r.yaml:4:52: rule 'a': bad predicate: `gt` takes a number")
    assert found[1].startswith("r.yaml:4:73: rule 'a': bad predicate: unknown operator 'prefx'")
    assert found[2].startswith("r.yaml:6:13: rule 'a': within: bad duration '10 minutes'")
    assert found[3].startswith("r.yaml:7:25: rule 'a': unknown connector 'emial' (did you mean 'email'?)")
    assert len(found) == 4


def test_duplicate_ids_across_files_name_the_first_definition(tmp_path: Path) -> None:
    rule = "rules:\n  - {id: dup, kind: absence, when: {event: A}, within: 1m, action: {connector: log}}\n"
    (tmp_path / "a.yaml").write_text(rule)
    (tmp_path / "b.yml").write_text("# second\n" + rule)
    (tmp_path / "a.test.yaml").write_text("this is not a rules file: [")  # test files are skipped
    with pytest.raises(RuleFileError) as info:
        load_rules([tmp_path])
    [problem] = info.value.problems
    assert problem == Problem(str(tmp_path / "b.yml"), 3, 10, problem.message)
    assert f"duplicate rule id 'dup' (first defined at {tmp_path / 'a.yaml'}:2)" in problem.message


def test_unknown_connector_respects_the_known_set() -> None:
    text = "rules:\n  - {id: a, kind: absence, when: {event: A}, within: 1m, action: {connector: pager}}\n"
    assert parse_rules(text, known_connectors={"pager"}).rules[0].connector == "pager"
    assert "unknown connector 'pager'" in problems(text)[0]


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("kind: absense", "unknown or missing kind 'absense'"),
        ("id: Bad-Id", "String should match pattern"),
        ("if: {segment: nope}", "unknown segment 'nope'"),
        ("if: {cart.value: {between: [1, 2]}}", "unknown operator 'between'"),
        ("if: {carts.value: 1}", "unknown lead path 'carts.value'"),
        ("when: {event: A, where: {lead.nope: 1}}", "unknown lead path 'lead.nope'"),
        ("max_per_lead: 0", "greater than or equal to 1"),
        ("on_cap: later", "'defer' or 'drop'"),
    ],
)
def test_each_kind_of_mistake_has_a_specific_message(snippet: str, message: str) -> None:
    base = {"id": "id: a", "kind": "kind: absence", "when": "when: {event: A}"}
    key = snippet.split(":")[0]
    lines = [base[k] if k != key else snippet for k in base]
    if key not in base:
        lines.append(snippet)
    text = "rules:\n  - " + "\n    ".join([*lines, "within: 1m", "action: {connector: log}"]) + "\n"
    found = problems(text)
    assert any(message in line for line in found), found


def test_yaml_syntax_errors_and_duplicate_keys_have_positions() -> None:
    assert problems("rules: [\n")[0].startswith("r.yaml:2:1: YAML syntax error")
    dup = "rules:\n  - id: a\n    id: b\n"
    assert problems(dup) == ["r.yaml:3:5: duplicate key 'id' (first defined at line 2); remove one of them"]


def test_score_rules_need_an_action_for_every_threshold_and_ordered_stages() -> None:
    text = """rules:
  - id: s
    kind: score
    points: [{match: {event: A}, points: 1}]
    stages: {mql: 40, lead: 10}
    thresholds: [{at: 5}]
"""
    found = problems(text)
    assert any("give every threshold its own `action:`" in p for p in found), found


def test_version_ignores_formatting_and_description_but_not_semantics() -> None:
    one = parse_rules("rules:\n  - {id: a, kind: absence, when: {event: A}, within: 60m, action: {connector: log}}")
    two = parse_rules(
        "rules:\n  - id: a\n    description: reworded\n    kind: absence\n    when:\n      event: [A]\n"
        "    within: 1h\n    action: {connector: log}\n"
    )
    three = parse_rules("rules:\n  - {id: a, kind: absence, when: {event: A}, within: 61m, action: {connector: log}}")
    assert one.rules[0].version == two.rules[0].version != three.rules[0].version
    assert one.rules[0].key == two.rules[0].key  # state survives reformatting
    assert one.rules[0].key != three.rules[0].key  # an edited absence rule starts afresh (FRESH_ON_EDIT)


def test_segment_definitions_are_part_of_the_version() -> None:
    rule = (
        "rules:\n  - {id: a, kind: absence, when: {event: A}, within: 1m, if: {segment: vip},\n"
        "     action: {connector: log}}"
    )
    low = parse_rules("segments:\n  vip: {traits.ltv: {gte: 100}}\n" + rule)
    high = parse_rules("segments:\n  vip: {traits.ltv: {gte: 500}}\n" + rule)
    assert low.rules[0].version != high.rules[0].version


@pytest.mark.parametrize(("text", "ms"), [("90s", 90_000), ("30m", 1_800_000), ("4h", 14_400_000), ("7d", 604_800_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms and format_duration(ms) in (text, "1w")


@pytest.mark.parametrize("bad", ["30", "1.5h", "-5m", "5 mins", 30, None])
def test_bad_durations_explain_the_format(bad: object) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 30m, 4h, 7d"):
        parse_duration(bad)


def test_disabled_rules_are_loaded_but_not_active() -> None:
    ruleset = parse_rules(
        "rules:\n  - {id: a, kind: absence, when: {event: A}, within: 1m, enabled: false,\n"
        "     action: {connector: log}}"
    )
    assert [r.id for r in ruleset.rules] == ["a"] and ruleset.active == ()


def test_an_edit_that_changes_the_slot_shape_gets_a_new_state_key() -> None:
    def key(body: str) -> str:
        return parse_rules(f"rules:\n  - {{id: a, {body}, action: {{connector: log}}}}").rules[0].key

    count = key("kind: threshold, match: {event: A}, count: 2, within: 1m")
    assert count != key("kind: threshold, match: {event: B}, count: 3, within: 5m")  # edited: afresh
    assert count != key("kind: threshold, match: {event: A}, sum: {field: properties.v, gte: 2}, within: 1m")
    assert count != key("kind: absence, when: {event: A}, within: 1m")
    score = "kind: score, points: [{match: {event: A}, points: %d}], thresholds: [{at: 5}]"
    assert key(score % 1) == key(score % 2)  # a score keeps the lead's score across edits


def test_trusted_is_a_boolean_on_matchers_and_changes_the_version_only_when_set() -> None:
    plain = "rules:\n  - {id: a, kind: absence, when: {event: A}, within: 1m, action: {connector: log}}"
    explicit_false = plain.replace("{event: A}", "{event: A, trusted: false}")
    trusted = plain.replace("{event: A}", "{event: A, trusted: true}")
    versions = [parse_rules(text).rules[0].version for text in (plain, explicit_false, trusted)]
    # rules written before `trusted` existed keep their versions (and so their action ids)
    assert versions[0] == versions[1] != versions[2]
    found = problems(plain.replace("{event: A}", "{event: A, trusted: \"yes\"}"))
    assert any("valid boolean" in line for line in found), found
    found = problems(plain.replace("{event: A}", "{event: A, trusted: 1}"))
    assert any("valid boolean" in line for line in found), found
