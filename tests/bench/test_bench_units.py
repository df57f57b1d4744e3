"""Unit tests of the benchmark's pure parts: seeded workload, restamping, percentiles, rule compression,
profile summary, report. No services."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench import report
from bench.profiling import summarise
from bench.rule_pack import SHIPPED, compressed_pack
from bench.runs import percentiles
from bench.workload import generate, restamp
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


def test_report_ratios_targets_and_table() -> None:
    results = {
        "started_at": "2026-01-01T00:00:00Z",
        "broker_profile": "batched",
        "partitions": 8,
        "workload": {"events": 10, "leads": 2, "seed": 7},
        "measurements": {
            "raw": {"events_per_s": 100_000, "cpu_s_per_1k": 0.01},
            "naive": {"events_per_s": 1_000, "cpu_s_per_1k": 0.3},
            "worker": {"events_per_s": 3_500, "cpu_s_per_1k": 0.2,
                       "state": {"active_leads": 2, "state_bytes": 600, "state_bytes_per_lead": 300.0,
                                 "rss_bytes": [100 * 1024 * 1024]}},
        },
    }
    report.summarise(results)
    assert results["ratios"]["worker_vs_naive (3/2)"] == 3.5
    verdicts = {t["target"]: t["holds"] for t in results["targets"]}
    assert verdicts["worker >= 3x naive agent"] is True
    assert verdicts["stretch: worker >= 5x naive agent"] is False
    assert verdicts["state <= 1 KiB per active lead"] is True
    assert verdicts["deadline lag p99 < 1 s"] is None  # no latency run in these results
    assert "MISSED" in report.table(results)
