"""`nudge demo`: the whole pipeline on the bundled sample clickstream, started and stopped by one command.

Modules: `receivers` (loopback HTTP and SMTP peers the connectors deliver to), `replay` (the time-compressed
clickstream replayer), `watch` (live action lines and progress from the output topics), `run` (the
orchestration, the `nudge` sub-processes it runs as `engine.testing.ChildProcess`es, and the closing ClickHouse
summary), `options` (paths and defaults).

It runs the real processes as `nudge` sub-commands, so it may import the packages it drives and reads
(`engine.clickhouse`, `engine.kafka`, `engine.language`, `engine.events`, `engine.config`), `engine.devstack` and
the shipped harness `engine.testing`; only `engine.commands` imports it.
"""
