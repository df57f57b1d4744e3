"""Experiments through the commands: `nudge simulate` prints each action's arm (and `--experiments` the records),
`nudge rules test` cases can expect the experiment and variant of an action."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.core.experiments import assign_arm

RULES = """rules:
  - id: cart
    kind: absence
    when: {event: Product Added}
    unless: {event: Order Completed}
    within: 10m
    action: {connector: email, template: cart_a}
    experiment:
      id: cart-test
      holdout: 50%
      variants: [{id: a}, {id: b, action: {template: cart_b}}]
"""


def _event(lead: str, name: str, minute: int, **props: object) -> bytes:
    return orjson.dumps(
        {"type": "track", "event": name, "userId": lead, "messageId": f"{lead}-{minute}",
         "timestamp": f"2026-01-05T10:{minute:02d}:00Z", "properties": props}
    )  # fmt: skip


def _arm(lead: str) -> str:
    return assign_arm("cart-test", lead, 0.5, [("a", 1), ("b", 1)])


def test_simulate_prints_the_arm_of_every_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    leads = [f"u{i}" for i in range(12)]
    lines = [_event(lead, "Product Added", 0) for lead in leads] + [_event(leads[0], "Order Completed", 15, total=9)]
    (tmp_path / "e.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    args = ["simulate", "--rules", str(tmp_path / "r.yaml"), "--events", str(tmp_path / "e.jsonl"), "--experiments"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    actions = [orjson.loads(line) for line in out.splitlines()]
    assert len(actions) == len(leads)
    for action in actions:
        arm = _arm(action["lead_id"])
        assert (action["experiment"], action["variant"], action["held_out"]) == ("cart-test", arm, arm == "holdout")
        assert action["template"] == ("cart_b" if arm == "b" else "cart_a")
    assert f"experiment: 2026-01-05T10:10:00.000Z u0 cart-test assigned {_arm('u0')}" in err
    assert f"experiment: 2026-01-05T10:15:00.000Z u0 cart-test goal {_arm('u0')} 9" in err


def test_rules_test_cases_can_expect_the_arm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    lead = next(f"u{i}" for i in range(100) if _arm(f"u{i}") == "b")
    held = next(f"u{i}" for i in range(100) if _arm(f"u{i}") == "holdout")
    (tmp_path / "r.test.yaml").write_text(
        "cases:\n"
        "  - name: variant b and the holdout\n"
        f"    events: [{_event(lead, 'Product Added', 0).decode()}, {_event(held, 'Product Added', 1).decode()}]\n"
        "    expect:\n"
        f"      - {{rule: cart, lead_id: {lead}, experiment: cart-test, variant: b, template: cart_b}}\n"
        f"      - {{rule: cart, lead_id: {held}, variant: holdout, held_out: true}}\n"
        "    experiments:\n"
        f"      - {{experiment: cart-test, event: assigned, lead_id: {lead}, variant: b, at: '2026-01-05T10:10:00Z'}}\n"
        f"      - {{event: assigned, lead_id: {held}, variant: holdout, rule: cart}}\n"
        "  - name: wrong arm\n"
        f"    events: [{_event(lead, 'Product Added', 0).decode()}]\n"
        "    expect: [{rule: cart, variant: a}]\n"
        "    experiments: [{variant: a}]\n"
    )
    assert main(["rules", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ok   " in out and "variant b and the holdout" in out
    assert "FAIL" in out and "variant: expected 'a', got 'b'" in out
    assert "experiments[0] (cart-test assigned b for" in out and "variant: expected 'a', got 'b'" in out
    assert out.count("experiments[") == 1 and "unexpected experiment record" not in out
