"""The experiment SQL on chDB: the assignment formula in ClickHouse agrees with the core's Python (hashlib) for many
lead ids and bit for bit at the arm boundaries; the migration-5 views count arms from lead updates and actions
written in the sink's formats (duplicates, merged ids, held-out actions); the report's numbers are the statistics
module's."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import main
from engine.clickhouse import experiments as ex
from engine.clickhouse import kpis
from engine.clickhouse.client import connect
from engine.clickhouse.migrations import migrate
from engine.clickhouse.rows import Record, to_row
from engine.commands.report import experiment_configs, render, render_experiments
from engine.core.experiments import assign_arm, record
from engine.events import format_ts
from engine.experiments import statistics as st
from engine.kafka import topics
from tests.experiments.test_statistics import reference_arm

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400_000
NOW = (int(time.time() * 1000) // 60_000) * 60_000
T0 = NOW - 10 * DAY
_offsets = itertools.count()

CONFIGS: list[tuple[str, float, list[tuple[str, float]]]] = [
    ("cart-copy-test", 0.1, [("a", 50.0), ("b", 50.0)]),
    ("cart_abandoned", 0.2, []),
    ("three-way", 0.15, [("x", 1.0), ("y", 2.0), ("z", 3.0)]),
    ("no-holdout", 0.0, [("a", 1.0), ("b", 1.0)]),
]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = connect("chdb://memory")
    try:
        migrate(c)
        yield c
    finally:
        c.close()


@pytest.mark.parametrize(("experiment", "holdout", "variants"), CONFIGS)
def test_sql_assignment_matches_the_core_for_many_leads(
    client: Any, experiment: str, holdout: float, variants: list[tuple[str, float]]
) -> None:
    n = 5_000
    sql = (
        f"SELECT lead_id, {ex.assignment_sql(experiment, holdout, variants)} FROM "
        f"(SELECT concat('lead-', toString(number), if(number % 7 = 0, '@example.com', '')) AS lead_id "
        f"FROM numbers({n})) ORDER BY lead_id"
    )
    rows = client.query(sql).result_rows
    assert len(rows) == n
    wrong = [(lead, arm) for lead, arm in rows if arm != assign_arm(experiment, lead, holdout, variants)]
    assert all(assign_arm(experiment, lead, holdout, variants) == reference_arm(experiment, lead, holdout, variants)
               for lead, _ in rows[:500])  # fmt: skip
    assert not wrong[:5]


def _python_arm(x: int, holdout: float, variants: list[tuple[str, float]]) -> str:
    """The core's arithmetic (engine.core.experiments.assign_arm) on a given 64-bit hash."""
    u = x / 2**64
    if u < holdout:
        return "holdout"
    if not variants:
        return "treatment"
    v = (u - holdout) / (1 - holdout)
    total = sum(w for _, w in variants)
    cumulative = 0.0
    for name, weight in variants:
        cumulative += weight
        if cumulative / total > v:
            return name
    return variants[-1][0]


def _boundary_hashes(holdout: float, variants: list[tuple[str, float]]) -> list[int]:
    """64-bit hashes around every threshold (holdout, each cumulative share mapped back through v), both ends."""
    total = sum(w for _, w in variants) or 1.0
    shares, cumulative = [], 0.0
    for _, weight in variants:
        cumulative += weight
        shares.append(cumulative / total)
    thresholds = [holdout] + [holdout + s * (1 - holdout) for s in shares]
    out = {0, 1, 2**64 - 1, 2**64 - 1024, 2**64 - 2048, 2**63}
    for t in thresholds:
        centre = int(t * 2**64)
        for k in range(-3000, 3001, 97):
            out.add(min(2**64 - 1, max(0, centre + k)))
        for k in range(-4, 5):  # the exact neighbours too
            out.add(min(2**64 - 1, max(0, centre + k * 2048)))
    return sorted(out)


@pytest.mark.parametrize(("experiment", "holdout", "variants"), CONFIGS)
def test_sql_assignment_agrees_bit_for_bit_at_the_boundaries(
    client: Any, experiment: str, holdout: float, variants: list[tuple[str, float]]
) -> None:
    hashes = _boundary_hashes(holdout, variants)
    listed = ", ".join(f"toUInt64('{x}')" for x in hashes)
    sql = f"SELECT x, {ex.arm_sql('x', holdout, variants)} FROM (SELECT arrayJoin([{listed}]) AS x)"
    got = {int(x): arm for x, arm in client.query(sql).result_rows}
    assert len(got) == len(hashes)
    wrong = [(x, arm, _python_arm(x, holdout, variants)) for x, arm in got.items()
             if arm != _python_arm(x, holdout, variants)]  # fmt: skip
    assert not wrong[:5]
    arms_seen = set(got.values())
    assert "holdout" in arms_seen or holdout == 0.0
    assert {name for name, _ in variants} <= arms_seen or not variants


def test_hash_sql_is_the_first_eight_bytes_big_endian(client: Any) -> None:
    import hashlib

    expression = ex.hash_sql("cart-copy-test", "'user-1'")
    (x,) = client.query(f"SELECT {expression}").result_rows[0]
    assert int(x) == int.from_bytes(hashlib.sha256(b"cart-copy-test:user-1").digest()[:8], "big")


# ---------------------------------------------------------------------------------------------------------------
# The views, on rows in the sink's formats.


class History:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.updates: list[list[Any]] = []
        self.events: list[list[Any]] = []
        self.actions: list[list[Any]] = []

    def update(self, doc: dict[str, Any]) -> None:
        table, row = to_row(Record(topics.LEAD_UPDATES, 0, next(_offsets), doc["at_ms"], doc["lead_id"].encode(),
                                   orjson.dumps(doc)))  # fmt: skip
        assert table == "lead_updates"
        self.updates.append(row)

    def identify(self, anonymous_id: str, user_id: str, at_ms: int) -> None:
        doc = {"type": "identify", "anonymousId": anonymous_id, "userId": user_id, "messageId": f"i-{anonymous_id}",
               "timestamp": format_ts(at_ms), "traits": {}}  # fmt: skip
        table, row = to_row(Record(topics.CLICKSTREAM, 0, next(_offsets), at_ms, user_id.encode(), orjson.dumps(doc)))
        assert table == "events"
        self.events.append(row)

    def action(self, experiment: str, arm: str, lead: str, at_ms: int, outcome: str) -> None:
        action_id = f"act-{experiment}-{lead}-{at_ms}"
        base = [action_id, "cart_abandoned", lead, "email", experiment, arm, arm == "holdout"]
        self.actions.append([*base[:1], "fired", at_ms, *base[1:]])
        self.actions.append([*base[:1], outcome, at_ms + 1000, *base[1:]])

    def store(self) -> None:
        from engine.clickhouse.rows import COLUMNS

        self.client.insert("lead_updates", self.updates, column_names=COLUMNS["lead_updates"])
        if self.events:
            self.client.insert("events", self.events, column_names=COLUMNS["events"])
        columns = ["action_id", "step", "at", "rule", "lead_id", "connector", "experiment", "variant", "held_out"]
        self.client.insert("actions", self.actions, column_names=columns)


EXPERIMENT = "cart_abandoned"
N_LEADS = 600


@pytest.fixture(scope="module")
def stored(client: Any) -> dict[str, Any]:
    """600 leads assigned by the formula (holdout 20 %); treated leads convert more; every converted lead spends
    40 + 10 per its number mod 3; a replayed assignment and goal (other offsets) and a merged anonymous id."""
    h = History(client)
    expected: dict[str, dict[str, float]] = {}
    for i in range(N_LEADS):
        lead = f"user-{i}"
        arm = assign_arm(EXPERIMENT, lead, 0.2, [])
        at = T0 + i * 60_000
        h.update(record("assigned", lead, at, EXPERIMENT, arm, "cart_abandoned", f"m-{i}"))
        h.action(EXPERIMENT, arm, lead, at, "held_out" if arm == "holdout" else "sent")
        e = expected.setdefault(arm, {"leads": 0, "conversions": 0, "revenue": 0.0, "revenue_sq": 0.0, "sent": 0})
        e["leads"] += 1
        e["sent"] += arm != "holdout"
        if i % (10 if arm == "holdout" else 5) == 0:
            value = 40.0 + 10 * (i % 3)
            h.update(record("goal", lead, at + DAY, EXPERIMENT, arm, "cart_abandoned", f"o-{i}", value))
            h.update(record("goal", lead, at + 2 * DAY, EXPERIMENT, arm, "cart_abandoned", f"o2-{i}", None))
            e["conversions"] += 1
            e["revenue"] += value
            e["revenue_sq"] += value * value
            if i == 0:  # replayed: same records again under other Kafka offsets
                h.update(record("assigned", lead, at, EXPERIMENT, arm, "cart_abandoned", f"m-{i}"))
                h.update(record("goal", lead, at + DAY, EXPERIMENT, arm, "cart_abandoned", f"o-{i}", value))
    # an anonymous visitor assigned, then identified as user-1 (already assigned): one person, one arm
    arm_1 = assign_arm(EXPERIMENT, "user-1", 0.2, [])
    h.update(record("assigned", "anon-1", T0 + 30_000, EXPERIMENT, arm_1, "cart_abandoned", "m-anon"))
    h.identify("anon-1", "user-1", T0 + 40_000)
    # another experiment, assigned outside the report window
    h.update(record("assigned", "user-0", NOW - 100 * DAY, "old-test", "treatment", "welcome", "m-old"))
    h.store()
    return expected


def test_experiment_arms_view_counts_each_person_once(client: Any, stored: dict[str, Any]) -> None:
    rows = client.query(
        "SELECT variant, leads, conversions, revenue, revenue_sq, actions_sent, actions_held_out FROM experiment_arms "
        "WHERE experiment = 'cart_abandoned' ORDER BY variant"
    ).result_rows
    got = {v: (leads, conv, rev, sq, sent, held) for v, leads, conv, rev, sq, sent, held in rows}
    assert set(got) == {"holdout", "treatment"}
    for arm, e in stored.items():
        leads, conv, rev, sq, sent, held = got[arm]
        assert (leads, conv, sent) == (e["leads"], e["conversions"], e["sent"])
        assert rev == pytest.approx(e["revenue"]) and sq == pytest.approx(e["revenue_sq"])
        assert held == (e["leads"] if arm == "holdout" else 0)
    assert sum(got[a][0] for a in got) == N_LEADS
    assert client.query("SELECT count() FROM experiment_assignments WHERE person = 'user-1'").result_rows[0][0] == 1


def test_report_numbers_are_the_statistics_modules(client: Any, stored: dict[str, Any]) -> None:
    doc = ex.report(client, NOW - 30 * DAY, NOW)
    assert [e["experiment"] for e in doc["experiments"]] == ["cart_abandoned"]  # old-test is outside the window
    (exp,) = doc["experiments"]
    assert exp["rules"] == ["cart_abandoned"]
    assert [a["arm"] for a in exp["arms"]] == ["holdout", "treatment"]
    e_h, e_t = stored["holdout"], stored["treatment"]
    holdout = st.Arm("holdout", int(e_h["leads"]), int(e_h["conversions"]), e_h["revenue"], e_h["revenue_sq"])
    treated = st.Arm("treatment", int(e_t["leads"]), int(e_t["conversions"]), e_t["revenue"], e_t["revenue_sq"])
    want = st.compare(holdout, treated)
    (c,) = exp["comparisons"]
    assert c["verdict"] == want.verdict != st.NOT_ENOUGH_DATA
    assert c["absolute_uplift"] == pytest.approx(want.absolute, abs=1e-6)
    assert c["incremental_revenue"] == pytest.approx(want.incremental_revenue, abs=0.01)
    assert exp["overall"] == c
    assert doc["incremental_revenue"]["revenue"] == pytest.approx(want.incremental_revenue, abs=0.01)
    assert exp["arms"][1]["actions_sent"] == e_t["sent"] and exp["arms"][0]["actions_sent"] == 0
    assert exp["held_out_actions"] == e_h["leads"]


def test_analyse_with_variants_compares_each_with_holdout_and_the_first_variant() -> None:
    arms = [st.Arm("b", 1_000, 130), st.Arm("holdout", 300, 24), st.Arm("a", 1_000, 110)]
    doc = ex.analyse("copy", ["cart"], arms)
    assert [a["arm"] for a in doc["arms"]] == ["holdout", "a", "b"]
    assert [(c["arm"], c["baseline"]) for c in doc["comparisons"]] == [("a", "holdout"), ("b", "holdout"), ("b", "a")]
    assert doc["overall"]["arm"] == ex.TREATED
    small = ex.analyse("tiny", ["cart"], [st.Arm("holdout", 20, 1), st.Arm("treatment", 80, 9)])
    assert small["overall"]["verdict"] == st.NOT_ENOUGH_DATA
    assert ex.incremental_total([small]) is None


def test_report_experiments_renders_arms_uplift_verdict_and_incremental_revenue(
    client: Any, stored: dict[str, Any]
) -> None:
    doc = ex.report(client, NOW - 30 * DAY, NOW)
    text = render_experiments(doc)
    print(text)
    assert "Experiment cart_abandoned (rule cart_abandoned)" in text
    holdout, treated = stored["holdout"], stored["treatment"]
    assert re.search(rf"holdout\s+{int(holdout['leads'])}\s+0\s+{int(holdout['conversions'])}\s", text)
    assert re.search(rf"treatment\s+{int(treated['leads'])}\s+{int(treated['sent'])}\s+", text)
    assert "treatment vs holdout" in text and "pp" in text
    assert doc["experiments"][0]["overall"]["verdict"] in text
    assert "Incremental revenue (measured against holdouts)" in text
    assert "(no experiment" in render_experiments(ex.report(client, NOW - 2 * DAY - 100 * DAY, NOW - 101 * DAY))


def test_the_kpi_report_leads_with_incremental_revenue(client: Any, stored: dict[str, Any]) -> None:
    doc = kpis.report(client, NOW - 30 * DAY, NOW)
    assert doc["incremental_revenue"]["experiments"] == ["cart_abandoned"]
    text = render(doc)
    lines = text.splitlines()
    assert lines[2].startswith("Incremental revenue (measured against holdouts): ")
    assert "Recovered revenue: 0 orders" in text and "(attributed, not measured" in text
    assert kpis.report(client, NOW - 200 * DAY, NOW - 150 * DAY)["incremental_revenue"] is None


def test_report_experiments_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "experiments", "--since", "a month"]) == 2
    assert "--since 'a month' is not a duration" in capsys.readouterr().err
    assert main(["report", "--since", "a week"]) == 2


def test_uplift_sql_agrees_with_the_statistics_module(client: Any, stored: dict[str, Any]) -> None:
    result = client.query(ex.uplift_sql())
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    (row,) = [r for r in rows if r["experiment"] == "cart_abandoned"]
    want = ex.report(client, 0, 2**62)["experiments"]
    (cart,) = [e for e in want if e["experiment"] == "cart_abandoned"]
    overall = cart["overall"]
    assert row["verdict"] == overall["verdict"]
    assert row["uplift"] == pytest.approx(overall["absolute_uplift"], abs=1e-4)
    assert [row["uplift_ci95_low"], row["uplift_ci95_high"]] == pytest.approx(overall["absolute_uplift_ci95"], abs=1e-4)
    assert row["always_valid_p"] == pytest.approx(overall["sequential"]["p_value"], abs=1e-4)
    assert row["incremental_revenue"] == pytest.approx(overall["incremental_revenue"], abs=0.01)
    assert [row["incremental_ci95_low"], row["incremental_ci95_high"]] == pytest.approx(
        overall["incremental_revenue_ci95"], abs=0.01
    )


def test_the_experiments_dashboard_sql_runs_on_the_views(client: Any, stored: dict[str, Any]) -> None:
    """Every panel of dashboards/nudge-experiments.json, with the ClickHouse plugin's macros expanded as the plugin
    does, runs on chDB and returns the stored experiment."""
    model = orjson.loads((ROOT / "dashboards" / "nudge-experiments.json").read_bytes())
    targets = [t for p in model["panels"] for t in p.get("targets", [])]
    assert len(targets) == 4
    for target in targets:
        sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 30 DAY AND \1 <= now()", target["rawSql"])
        sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 1 HOUR)", sql)
        assert "$" not in sql, sql
        rows = client.query(sql).result_rows
        assert rows and any("cart_abandoned" in " ".join(map(str, row)) for row in rows), target["rawSql"]


def test_the_sample_ratio_check_uses_the_configured_experiment(client: Any, stored: dict[str, Any]) -> None:
    configs = experiment_configs(ROOT / "examples" / "rules")
    assert configs["cart_abandoned"] == (0.2, [])
    doc = ex.report(client, NOW - 30 * DAY, NOW, configs)
    balance = doc["experiments"][0]["balance"]
    assert balance["expected_shares"] == {"holdout": 0.2, "treatment": 0.8}
    assert not balance["mismatch"] and balance["p_value"] > 0.001
    assert "Sample ratio: arms split as configured (holdout 20%, treatment 80%" in render_experiments(doc)
    wrong = ex.report(client, NOW - 30 * DAY, NOW, {"cart_abandoned": (0.5, [])})
    assert wrong["experiments"][0]["balance"]["mismatch"]
    assert "SAMPLE RATIO MISMATCH" in render_experiments(wrong)
    renamed = ex.report(client, NOW - 30 * DAY, NOW, {"cart_abandoned": (0.2, [("a", 1.0), ("b", 1.0)])})
    assert renamed["experiments"][0]["balance"]["note"] == "arms not in the configuration: treatment"
    assert "not checked" in render_experiments(ex.report(client, NOW - 30 * DAY, NOW))
    assert experiment_configs(ROOT / "no-such-rules") == {}


def test_variants_keep_their_configured_order() -> None:
    arms = [st.Arm("a", 1_000, 110), st.Arm("holdout", 300, 24), st.Arm("b", 1_000, 130)]
    doc = ex.analyse("copy", ["cart"], arms, config=(0.1, [("b", 1.0), ("a", 1.0)]))
    assert [a["arm"] for a in doc["arms"]] == ["holdout", "b", "a"]
    assert [(c["arm"], c["baseline"]) for c in doc["comparisons"]][-1] == ("a", "b")


def test_the_documented_assignment_sql_agrees_with_the_core(client: Any, stored: dict[str, Any]) -> None:
    """docs/experiments.md's SQL example, run as written over the stored events' lead ids."""
    text = (ROOT / "docs" / "experiments.md").read_text()
    (sql,) = re.findall(r"```sql\n(.*?)```", text, re.S)
    rows = client.query(sql).result_rows
    assert rows
    for lead, arm in rows:
        assert arm == assign_arm("cart-copy-test", lead, 0.1, [("a", 50.0), ("b", 50.0)])


def test_the_demo_summary_lines(client: Any, stored: dict[str, Any]) -> None:
    from engine.demo.run import experiment_lines

    lines = experiment_lines(ex.report(client, 0, 2**62, experiment_configs(ROOT / "examples" / "rules")))
    text = "\n".join(lines)
    print(text)
    assert lines[0].startswith("  experiment cart_abandoned") and "holdout" in lines[0] and "treatment" in lines[0]
    assert "arms split as configured" in lines[1]
    assert "measured uplift" in text and "incremental revenue" in text
