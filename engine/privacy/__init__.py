"""Privacy: erasure, suppression, export and the request pipeline that carries them through every store (GDPR
Art. 15, 17, 21). docs/privacy.md tells operators what is erased where.

- `records`: the records on the `privacy-requests` (worker-internal, keyed by lead id) and `privacy` (keyed by
  request id) topics, and the keyed hash that stands for a lead id wherever the id itself must not be kept. Pure:
  the worker and the sink read these records, so it imports nothing but the standard library and orjson.
- `identities`: every id merged into a lead, from the collector's identity store (aliases both ways).
- `redis_erasure`: every Redis key of a lead (profile, aliases, known mark, schedule, idempotency claims, caps,
  re-check state, assignment with the rep's load released).
- `requests`: accept a request (resolve ids, suppress at the edge, hand it to the workers) and read its status.
- `coordinator`: drives accepted requests to completion (worker receipts, barriers behind the dispatcher and the
  sink, Redis, the sink's ClickHouse delete), hosted by the collector.
- `export`: one JSON document with everything Nudge holds about a lead.

May import `engine.collector.identity` (key names), `engine.dispatch` (its key layouts), `engine.assignment.store`,
`engine.clickhouse`, `engine.core` and `engine.language` (export rebuilds the state), `engine.events`,
`engine.kafka`, `engine.config`, `engine.metrics`, redis, aiokafka and orjson; never the worker's Faust shell.
Only `records` may be imported by the worker and the sink.
"""
