"""Nudge: a real-time behavior engine. Functional core, imperative shell; dependencies point one way.

- Bottom: `events` (the Segment event model) and `core` (pure rule evaluation: stdlib, orjson and `engine.events`
  only), then `language` (rule files → the core's structures). `config`, `metrics` and `kafka` (topic names and
  records, admin, partitioner) are shared leaves.
- Shells around the core, which never import each other except as listed in their own docstrings: `worker`
  (`nudge worker`, Faust), `dispatch` (`nudge dispatch`, with the top-level `connectors` package), `clickhouse`
  (sink, KPIs, replay), `collector` (the HTTP edge), `assignment` (reps and hot leads).
- Top: `commands` and `cli` (one thin module per `nudge` sub-command) and `demo`, which nothing below imports;
  `devstack` (the local services) and `testing` (the one shipped harness of tests, bench and demo) beside them.
tests/test_architecture.py enforces the direction.
"""

__version__ = "0.1.0"
