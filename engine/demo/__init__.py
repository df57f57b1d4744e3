"""`nudge demo`: the whole pipeline on the bundled sample clickstream, started and stopped by one command.

Modules: `processes` (the `nudge` sub-processes it runs), `receivers` (loopback HTTP and SMTP peers the
connectors deliver to), `replay` (the time-compressed clickstream replayer), `watch` (live action lines and
progress from the output topics), `run` (the orchestration and the closing ClickHouse summary), `options`
(paths and defaults).
"""
