"""`nudge rules diff`: the new rule files against the deployed ones (here `--against`) over a stored history in
chDB: per rule, actions added and removed with example leads; `--check` exits 1 on a change, 0 without one."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.clickhouse.client import connect
from engine.clickhouse.migrations import migrate
from engine.clickhouse.rows import COLUMNS, Record, to_row
from engine.events import format_ts
from engine.kafka import topics

MIN = 60_000
NOW = (int(time.time() * 1000) // MIN) * MIN
T0 = NOW - 2 * 24 * 60 * MIN
OLD = """rules:
  - {id: pricing, kind: threshold, match: {event: Pricing Viewed}, count: 3, within: 1h, action: {connector: log}}
  - {id: cart, kind: absence, when: {event: Product Added}, unless: {event: Order Completed}, within: 30m,
     action: {connector: log}}
  - {id: gone, kind: threshold, match: {event: Signed Up}, count: 1, within: 1h, action: {connector: log}}
"""
NEW = OLD.replace("count: 3", "count: 2").replace(
    "  - {id: gone, kind: threshold, match: {event: Signed Up}, count: 1, within: 1h, action: {connector: log}}\n",
    "  - {id: demo, kind: threshold, match: {event: Demo Viewed}, count: 1, within: 1h, action: {connector: log}}\n",
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    dsn = f"chdb://{tmp_path / 'ch'}"
    offsets = itertools.count()
    events = [
        ("twice", "Pricing Viewed", 0), ("twice", "Pricing Viewed", 1),  # fires with count 2 only
        ("thrice", "Pricing Viewed", 0), ("thrice", "Pricing Viewed", 1), ("thrice", "Pricing Viewed", 2),
        ("shopper", "Product Added", 0),  # unchanged rule: the same reminder in both
        ("newbie", "Signed Up", 5), ("newbie", "Demo Viewed", 6),
    ]
    rows: dict[str, list[list[object]]] = {}
    for lead, name, minute in events:
        at = T0 + minute * MIN
        doc = {"type": "track", "event": name, "userId": lead, "messageId": f"{lead}-{minute}-{name}",
               "timestamp": format_ts(at)}
        table, row = to_row(Record(topics.CLICKSTREAM, 0, next(offsets), at, lead.encode(), orjson.dumps(doc)))
        rows.setdefault(table, []).append(row)
    client = connect(dsn)
    try:
        migrate(client)
        for table, values in rows.items():
            client.insert(table, values, column_names=COLUMNS[table])
    finally:
        client.close()
    monkeypatch.setenv("NUDGE_CLICKHOUSE_DSN", dsn)
    return dsn


def test_diff_lists_added_and_removed_actions_per_rule_and_check_fails_on_a_change(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "r.yaml").write_text(OLD)
    (tmp_path / "new" / "r.yaml").write_text(NEW)
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    assert main(["rules", "diff", new, "--against", old, "--since", "7d", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    rules = {r["rule"]: r for r in doc["rules"]}
    assert doc["changes"] and doc["events"] == 8
    assert (rules["pricing"]["status"], rules["pricing"]["before"], rules["pricing"]["after"]) == ("changed", 1, 2)
    assert rules["pricing"]["added"] == 2 and rules["pricing"]["removed"] == 1  # fired earlier for 'thrice'
    assert sorted(rules["pricing"]["added_leads"]) == ["thrice", "twice"]
    assert rules["cart"] == {**rules["cart"], "status": "unchanged", "before": 1, "after": 1, "added": 0, "removed": 0}
    gone = rules["gone"]
    assert (gone["status"], gone["removed"], gone["removed_leads"]) == ("removed", 1, ["newbie"])
    assert (rules["demo"]["status"], rules["demo"]["added"], rules["demo"]["added_leads"]) == ("new", 1, ["newbie"])
    assert main(["rules", "diff", new, "--against", old, "--check"]) == 1
    assert "CHANGES actions" in capsys.readouterr().out
    assert main(["rules", "diff", old, "--against", old, "--check"]) == 0
    assert "no change in actions" in capsys.readouterr().out


def test_diff_of_an_invalid_rule_set_prints_what_validate_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(OLD.replace("within: 30m", "within: later"))
    assert main(["rules", "diff", str(bad), "--against", str(bad)]) == 2
    assert f"{bad}:3:" in capsys.readouterr().out
