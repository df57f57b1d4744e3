"""The ClickHouse side of Nudge: where everything seen and done is logged, and read back.

- `client`: DSN → client, the same API for embedded chDB and a ClickHouse server.
- `schema` + `migrations`: the tables, as versioned idempotent migrations applied at start-up.
- `rows`: Kafka records → rows (pure); the sink itself is `engine.clickhouse.sink`.
- `kpis`: KPI queries (`report()` for `nudge report`, `summary()` for the demo).
- `experiments`: the assignment formula in SQL and the per-arm counts behind `nudge report experiments` (the
  statistics are `engine.experiments.statistics`; the views are migration 5).
- `history` + `replay`: stored events back out, and the dry run of a rule set over them (`nudge replay`).

May import `engine.core` (replay runs the core), `engine.experiments`, `engine.events`, `engine.kafka`, `engine.config`,
`engine.metrics`, clickhouse-connect and aiokafka; nothing of the worker, the dispatcher, the collector,
assignment or connectors.
"""
