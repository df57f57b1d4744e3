"""Rule-set versions (engine.worker.rule_versions) and the core's state across versions: records round trip, a
deploy compiles to the rule set of its files, and per kind what an edit keeps (docs/worker.md#rule-deploys)."""

from __future__ import annotations

import functools
from pathlib import Path

import orjson
import pytest

from engine.core import LeadState, evaluate, pending_deadlines
from engine.core.model import Action, Tick
from engine.events import Event, parse_event
from engine.language import RuleFileError, load_rules, parse_rules, rule_files
from engine.worker.lead_worker import _rules_stamp
from engine.worker.rule_versions import Deploy, RulesLog, WorkerStatus, compile_deploy, snapshot

BASE_MS = 1_767_600_000_000


def track(name: str, t_s: float, lead: str = "u1") -> Event:
    return parse_event(
        {"type": "track", "event": name, "userId": lead, "timestamp": int(BASE_MS + t_s * 1000),
         "messageId": f"{name}-{t_s}"}
    )


def test_a_deploy_compiles_to_the_rule_set_of_its_files_in_their_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("rules:\n  - {id: b, kind: absence, when: {event: B}, within: 1m, "
                                     "action: {connector: log}}\n")
    (tmp_path / "a.yaml").write_text("rules:\n  - {id: a, kind: threshold, match: {event: A}, count: 2, "
                                     "within: 1m, action: {connector: log}}\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.yaml").write_text("rules:\n  - {id: c, kind: absence, when: {event: C}, within: 1m, "
                                  "action: {connector: log}}\n")
    paths = [str(tmp_path / "b.yaml"), str(other), str(tmp_path / "a.yaml")]
    rules = load_rules(paths)
    deploy = snapshot(rule_files(paths), rules, "ann", "first")
    again = Deploy.parse(deploy.to_bytes())
    assert again == deploy and deploy.rules == ("b", "c", "a")
    compiled = compile_deploy(again, load_rules)
    assert compiled.version == rules.version == deploy.version
    assert [r.id for r in compiled.rules] == ["b", "c", "a"]


def test_a_deploy_is_checked_like_the_files_connectors_included(tmp_path: Path) -> None:
    deploy = Deploy("x", (("r.yaml", "rules:\n  - {id: a, kind: absence, when: {event: A}, within: 1m, "
                                      "action: {connector: crm}}\n"),), 1, "ann")
    with pytest.raises(RuleFileError, match="crm"):
        compile_deploy(deploy, functools.partial(load_rules, known_connectors={"log"}))


def test_the_log_keeps_every_deploy_in_order_and_the_latest_status_per_worker() -> None:
    log = RulesLog()
    first, second = Deploy("v1", (), 1, "ann"), Deploy("v2", (), 2, "bob", "threshold 3")
    for record in (first, second, Deploy("v1", (), 3, "ann", "rollback to v1")):
        assert log.add(record.key, record.to_bytes()) == record
    log.add(b"status/w1", WorkerStatus("w1", "v1", 1, 1, "files").to_bytes())
    log.add(b"status/w1", WorkerStatus("w1", "v2", 2, 2, "deploy", "v1", {0: 17, 3: 4}).to_bytes())
    assert log.add(b"status/junk", b"{") is None and log.add(b"deploy/junk", b"[]") is None
    assert [d.version for d in log.deploys] == ["v1", "v2", "v1"]
    assert log.latest is not None and log.latest.message == "rollback to v1"
    assert log.find("v2") == second and log.find("v") is None  # an ambiguous prefix finds nothing
    assert log.statuses["w1"].switch == {0: 17, 3: 4}
    assert len({d.key for d in log.deploys}) == 3  # one key per deploy: compaction keeps the history


V1 = """rules:
  - {id: cart, kind: absence, when: {event: Product Added}, unless: {event: Order Completed}, within: 10m,
     action: {connector: log}}
  - {id: hot, kind: threshold, match: {event: Pricing Viewed}, count: 3, within: 1h, action: {connector: log}}
  - {id: score, kind: score, points: [{match: {event: Pricing Viewed}, points: 10}], thresholds: [{at: 50}],
     action: {connector: log}}
  - {id: gone, kind: absence, when: {event: Trial Started}, within: 5m, action: {connector: log}}
"""


def test_across_versions_an_unchanged_rule_keeps_its_state_an_edited_one_starts_afresh() -> None:
    v1 = parse_rules(V1)
    v2 = parse_rules(
        V1.replace("count: 3", "count: 2")  # edited threshold: its window starts afresh
        .replace("points: 10", "points: 20")  # edited score: the lead's score is kept
        .replace("  - {id: gone, kind: absence, when: {event: Trial Started}, within: 5m, action: {connector: log}}\n",
                 "  - {id: new, kind: threshold, match: {event: Pricing Viewed}, count: 1, within: 1h,\n"
                 "     action: {connector: log}}\n")
    )
    state: LeadState | None = None
    for event in (track("Product Added", 0), track("Trial Started", 1), track("Pricing Viewed", 2),
                  track("Pricing Viewed", 3)):
        state = evaluate(v1, state, event).state
    assert state is not None
    assert pending_deadlines(v1, state) == [BASE_MS + 301_000, BASE_MS + 600_000]
    # the removed rule's deadline is gone at once (what the worker's index is rebuilt from) ...
    assert pending_deadlines(v2, state) == [BASE_MS + 600_000]
    result = evaluate(v2, state, track("Pricing Viewed", 4))
    fired = sorted(a.rule for a in result.actions)
    # ... the edited threshold counts from the switch (1 of 2), the new rule sees events from the switch on
    assert fired == ["new"]
    score = v2.get("score")
    assert score is not None and result.state.slot(score).value == 40  # 2 x 10 before, + 20 after
    # the unchanged absence rule kept its episode and fires at its deadline, once
    ticked = evaluate(v2, result.state, Tick(BASE_MS + 600_000))
    assert [a.rule for a in ticked.actions] == ["cart"] and not ticked.deadlines
    assert not any(a.rule == "gone" for a in evaluate(v2, state, Tick(BASE_MS + 700_000)).actions)


def test_the_stamped_action_reads_as_the_same_action_with_its_rule_set_version() -> None:
    action = Action("act_1", "cart", "v1", "u1", 1000, ("m1",), "email", "why")
    stamped = action.to_bytes()[:-1] + _rules_stamp("c00deb3579b7")
    assert Action.from_json(stamped) == action  # readers that do not know the field ignore it
    assert orjson.loads(stamped)["rules_version"] == "c00deb3579b7"
