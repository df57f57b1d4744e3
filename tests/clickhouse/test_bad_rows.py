"""One record ClickHouse cannot take must not block the sink: it is isolated, skipped and counted."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import REGISTRY

from engine.clickhouse.client import connect
from engine.clickhouse.rows import Record, to_row
from engine.clickhouse.sink import Sink
from engine.config import Settings
from engine.core.model import Action
from engine.kafka import topics


def test_a_row_outside_its_column_type_is_skipped_and_the_rest_written(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    client = connect(f"chdb://{tmp_path / 'ch'}")  # the sink's client: chDB allows one per path and process
    sink = Sink(Settings(), connect_fn=lambda: client)
    rows = []
    for i in range(9):
        action = Action(f"act_{i}", "r", "v1", f"l{i}", now, (f"m{i}",), "email", "x", priority=i)
        rows.append(to_row(Record(topics.ACTIONS, 0, i, now, None, action.to_bytes()))[1])
    bad = Action("act_bad", "r", "v1", "lb", now, ("mb",), "email", "x", priority=10**9)  # Int16 column
    rows.insert(4, to_row(Record(topics.ACTIONS, 0, 99, now, None, bad.to_bytes()))[1])
    before = REGISTRY.get_sample_value(
        "nudge_sink_skipped_records_total", {"topic": "actions", "reason": "rejected_row"}
    )
    try:
        sink.insert_rows("actions", rows, "tok-1")
        sink.insert_rows("actions", rows, "tok-1")  # a retry of the same batch: deduplicated
        stored = [r[0] for r in client.query("SELECT action_id FROM actions ORDER BY action_id").result_rows]
        assert stored == [f"act_{i}" for i in range(9)]
        after = REGISTRY.get_sample_value(
            "nudge_sink_skipped_records_total", {"topic": "actions", "reason": "rejected_row"}
        )
        assert after - (before or 0) == 2  # once per attempt
    finally:
        client.close()
