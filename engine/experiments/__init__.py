"""Experiment analysis (issue 19, docs/experiments.md): what the arms of an experiment measured and what it means.

- `statistics`: pure functions over per-arm counts (no I/O): rates, uplift with 95 % intervals, the always-valid
  sequential test, incremental revenue, the sample-ratio check.

The ClickHouse queries that produce the counts live in `engine.clickhouse.experiments`; assignment itself in the
core (`engine.core.experiments`). May import the standard library only.
"""
