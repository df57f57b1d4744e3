"""Unit tests of the benchmark's pure parts: seeded workload and its laps, the journey-heavy workload,
restamping, percentiles, rule compression, profile summary, steady-state windows, report, targets and gates.
No services."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench import report, steady, targets
from bench.profiling import summarise
from bench.rule_pack import SHIPPED, compressed_pack
from bench.runs import percentiles
from bench.workload import generate, journey_heavy, laps, one_event_per_lead, restamp
from engine.events import parse_event
from engine.language import load_rules


def test_workload_is_seeded_sized_and_keyed_by_lead() -> None:
    first, again = generate(600, 150, seed=3), generate(600, 150, seed=3)
    assert [r.value for r in first.records] == [r.value for r in again.records]
    assert len(first.records) == 600
    assert generate(600, 150, seed=4).records[0].value != first.records[0].value
    times = [r.timestamp_ms for r in first.records]
    assert times == sorted(times)
    for record in first.records:
        if record.valid:
            assert parse_event(record.value).lead_id.encode() == record.key
    assert first.valid == 600 - 12  # the malformed records the worker must dead-letter
    assert {"Product Viewed", "Product Added", "identify"} <= set(first.mix)


def test_workload_leads_can_start_after_another_workload() -> None:
    grown = generate(200, 50, seed=1, first_lead=1000)
    ids = {orjson.loads(r.value).get("userId") for r in grown.records if r.valid}
    assert all(i is None or int(i[1:]) >= 1000 for i in ids)


def test_restamp_replaces_only_the_timestamp() -> None:
    record = next(r for r in generate(50, 10).records if r.valid)
    stamped = restamp(record.value, 1_800_000_000_123)
    before, after = orjson.loads(record.value), orjson.loads(stamped)
    assert after["timestamp"] == "2027-01-15T08:00:00.123Z"
    assert {k: v for k, v in after.items() if k != "timestamp"} == {
        k: v for k, v in before.items() if k != "timestamp"
    }
    assert parse_event(stamped).timestamp_ms == 1_800_000_000_123


def test_percentiles_nearest_rank() -> None:
    assert percentiles([]) == {"count": 0, "p50": None, "p99": None, "max": None}
    got = percentiles([float(i) for i in range(1, 101)])
    assert (got["count"], got["p50"], got["p99"], got["max"]) == (100, 50.0, 99.0, 100.0)


def test_compressed_pack_divides_absence_windows_only(tmp_path: Path) -> None:
    windows = compressed_pack(SHIPPED, tmp_path, 600)
    assert windows["cart_abandoned"] == 3_000  # 30 min / 600
    shipped = {r.id: r for r in load_rules([SHIPPED]).rules}
    compressed = {r.id: r for r in load_rules([tmp_path]).rules}
    assert set(compressed) == set(shipped)
    assert {r.kind for r in compressed.values()} == {r.kind for r in shipped.values()}


def test_profile_summary_buckets_and_leaves(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "main (x.py:1);evaluate (engine/core/evaluate.py:10) 3\n"
        "main (x.py:1);wait_first (mode/services.py:777) 1\n"
        "garbage line\n"
    )
    got = summarise(stacks)
    assert got["samples"] == 4
    assert got["share_percent"]["rule evaluation (engine.core)"] == 75.0
    assert got["share_percent"]["Faust stream/consumer machinery"] == 25.0
    assert got["top_self_percent"][0] == ("evaluate (engine/core/evaluate.py:10)", 75.0)


def _step(rates: list[int], cpu: float = 0.2, flags: tuple[str, ...] = ()) -> dict:
    windows = [{"seconds": 20.0, "events": r * 20, "events_per_s": r, "cpu_s_per_1k": cpu, "flags": list(flags),
                "cores_busy": {"measured": [0.9], "broker": 0.1, "harness": 0.0, "machine": 1.2, "interrupts": 0.0,
                               "others": 0.2}}
               for r in rates]
    return steady.summarise(windows, asked=3)


def test_steady_window_from_edge_samples_and_flags() -> None:
    s0 = steady.Sample(100.0, 1_000, (10.0, 5.0), joins=2, broker_cpu_s=1.0, machine_busy_s=50.0)
    s1 = steady.Sample(120.0, 101_000, (20.0, 13.0), joins=2, broker_cpu_s=3.0, machine_busy_s=76.0)
    got = steady.window(s0, s1, asked_s=20.0)
    assert (got["events_per_s"], got["cpu_s_per_1k"], got["flags"]) == (5_000, 0.18, [])
    assert got["cores_busy"] == {"measured": [0.5, 0.4], "broker": 0.1, "harness": 0.0, "machine": 1.3,
                                 "interrupts": 0.0, "others": 0.3}
    rebalanced = steady.Sample(120.0, 101_000, (20.0, 13.0), joins=3)
    assert steady.window(s0, rebalanced, 20.0)["flags"] == ["rebalance"]
    short = steady.Sample(110.0, 50_000, (15.0, 9.0), joins=2)
    assert steady.window(s0, short, 20.0)["flags"] == ["short"]
    assert steady.window(s0, s1, 20.0, exhausted=True)["flags"] == ["short"]
    quick = steady.window(steady.Sample(0.0, 0, (0.0,), 0), steady.Sample(4.0, 400, (1.0,), 0), asked_s=4.0)
    assert quick["flags"] == ["below minimum"]


def test_steady_summary_median_spread_and_validity() -> None:
    got = _step([4_000, 5_000, 4_500])
    assert (got["events_per_s"], got["events_per_s_min"], got["events_per_s_max"]) == (4_500, 4_000, 5_000)
    assert got["spread"] == round(1_000 / 4_500, 3)
    assert got["valid"] and got["flags"] == []
    assert _step([4_000], flags=("short",))["flags"] == ["missing repetitions", "short"]


def test_backlog_outlasts_the_windows() -> None:
    plan = steady.Plan(repetitions=3, window_s=20.0, warm_s=5.0)
    assert steady.backlog_events(1_000, plan, safety=1.0, slack_s=0.0) == 65_000
    assert steady.estimate_seconds(plan, startup_s=10.0) == 10 + 5 + 3 * 20.5


def test_laps_repeat_the_leads_later_with_unique_ids() -> None:
    base = generate(300, 80, seed=5)
    records = list(laps(base, 700))
    assert len(records) == 700
    assert records[:300] == base.records
    first, again = records[0], records[300]
    assert again.key == first.key and again.timestamp_ms > base.records[-1].timestamp_ms
    doc, later = orjson.loads(first.value), orjson.loads(again.value)
    assert later["messageId"] != doc["messageId"] and later["messageId"].startswith("00000001")
    assert parse_event(again.value).timestamp_ms == again.timestamp_ms


def test_journey_heavy_workload_enters_every_journey() -> None:
    heavy = journey_heavy(300, seed=2)
    assert {"Signed Up", "Content Downloaded", "Order Completed"} <= set(heavy.mix)
    assert all(parse_event(r.value).lead_id.encode() == r.key for r in heavy.records)
    assert heavy.records[-1].timestamp_ms - heavy.records[0].timestamp_ms > 3 * 86_400_000


def test_report_ratios_targets_gates_and_table() -> None:
    results = {
        "started_at": "2026-01-01T00:00:00Z",
        "broker_profile": "batched",
        "partitions": 8,
        "workload": {"events": 10, "leads": 2, "seed": 7},
        "baseline": {"worker_vs_naive": 4.0, "worker_cpu_s_per_1k": 0.5},
        "measurements": {
            "raw": _step([100_000] * 3, cpu=0.01),
            "naive": _step([1_000] * 3, cpu=0.3),
            "worker": {**_step([3_500, 3_400, 3_600]),
                       "state": {"active_leads": 2, "state_bytes": 600, "state_bytes_per_lead": 300.0,
                                 "rss_bytes": [100 * 1024 * 1024]}},
        },
        "errors": {},
    }
    report.summarise(results)
    assert results["ratios"]["worker_vs_naive (3/2)"] == 3.5
    verdicts = {t["target"]: t["holds"] for t in results["targets"]}
    assert verdicts["worker >= 3x naive agent"] is True
    assert verdicts["worker >= 8x naive agent (full pack, 50k leads)"] is False
    assert verdicts["state <= 1 KiB per active lead (50k leads, all packs)"] is True
    assert verdicts["worker CPU-s per 1k events halved vs baseline"] is True
    assert verdicts["deadline lag p99 < 800 ms at 80% of max"] is None  # no latency run in these results
    gates = {g["gate"]: g for g in results["gates"]}
    assert gates["valid measurements"]["holds"] is True
    assert gates["ratio guard"]["holds"] is True  # 3.5 >= 4.0 * (1 - max(0.15, 0.057))
    # issue 22: a missed target makes the run exit non-zero, even with valid windows and no regression
    assert gates["targets met"]["holds"] is False
    assert "worker >= 8x naive agent (full pack, 50k leads)" in gates["targets met"]["missed"]
    assert report.exit_code(results) == 1
    assert "MISSED" in report.table(results)
    report.summarise(results, quick=True)  # a development run: its windows prove nothing either way
    assert {g["gate"]: g["holds"] for g in results["gates"]}["targets met"] is None
    assert report.exit_code(results) == 0
    report.summarise(results)

    results["measurements"]["naive"] = _step([1_300] * 3, cpu=0.3)  # 3/2 = 2.69 < 3.4: beyond noise
    report.summarise(results)
    assert {g["gate"]: g["holds"] for g in results["gates"]}["ratio guard"] is False
    assert report.exit_code(results) == 1

    results["measurements"]["naive"] = _step([1_000, 1_000], cpu=0.3, flags=("rebalance",))
    report.summarise(results)
    validity = {g["gate"]: g for g in results["gates"]}["valid measurements"]
    assert validity["holds"] is False and validity["flagged"] == {"naive": ["missing repetitions", "rebalance"]}
    assert "FAIL" in report.table(results)


def test_ratio_guard_compares_cpu_per_event_when_the_baseline_has_it() -> None:
    results = {
        "baseline": {"worker_vs_naive": 4.87, "worker_vs_naive_cpu": 4.89},
        "measurements": {"naive": _step([3_200] * 3, cpu=0.30), "worker": _step([12_800] * 3, cpu=0.061)},
        "errors": {},
    }
    report.summarise(results)
    gate = {g["gate"]: g for g in results["gates"]}["ratio guard"]
    # rates say 4.0x (under the 4.14 floor); CPU per event says 4.92x: the worker did not get slower
    assert gate["compares"] == "CPU per event" and gate["value"] == 4.918 and gate["holds"] is True
    results["measurements"]["worker"] = _step([12_800] * 3, cpu=0.08)  # 3.75x by CPU: beyond 15 %
    report.summarise(results)
    assert {g["gate"]: g["holds"] for g in results["gates"]}["ratio guard"] is False


def test_quick_runs_do_not_fail_on_short_asked_windows() -> None:
    step = _step([1_000] * 3, flags=("below minimum",))
    assert targets.validity({"measurements": {"naive": step}}, quick=True)["holds"] is True
    assert targets.validity({"measurements": {"naive": step}}, quick=False)["holds"] is False


def test_baseline_from_a_previous_results_file() -> None:
    doc = {"ratios": {"worker_vs_naive (3/2)": 4.867}, "environment": {"commit": "abc"},
           "measurements": {"worker": {"events_per_s": 5_286, "cpu_s_per_1k": 0.1869}}}
    got = report.baseline_from(doc, "HEAD")
    assert got is not None and got["worker_vs_naive"] == 4.867 and got["worker_cpu_s_per_1k"] == 0.1869
    assert got["worker_vs_naive_cpu"] is None  # no naive CPU figure in this file: the guard compares rates
    assert report.baseline_from({}, "HEAD") is None


def test_one_event_per_lead_gives_each_lead_state_cheaply() -> None:
    records = list(one_event_per_lead(50, first_lead=10))
    assert len({r.key for r in records}) == 50 and records[0].key == b"s0000010"
    events = [parse_event(r.value) for r in records]
    assert all(e.lead_id.encode() == r.key for e, r in zip(events, records, strict=True))
    assert len({e.message_id for e in events}) == 50


def test_other_users_load_flags_a_window_as_contended() -> None:
    s0 = steady.Sample(0.0, 0, (0.0,), 0, broker_cpu_s=0.0, machine_busy_s=100.0)
    busy = steady.Sample(20.0, 100_000, (18.0,), 0, broker_cpu_s=2.0, machine_busy_s=100.0 + 32.0)
    got = steady.window(s0, busy, 20.0)  # machine 1.6 cores, measured 0.9, broker 0.1: others 0.6
    assert got["flags"] == ["contended"] and got["cores_busy"]["others"] == 0.6
    quiet = steady.Sample(20.0, 100_000, (18.0,), 0, broker_cpu_s=2.0, machine_busy_s=100.0 + 22.0)
    assert steady.window(s0, quiet, 20.0)["flags"] == []
