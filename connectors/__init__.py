"""Outbound shell: the connector contract (`base.Connector` and its errors), the registry of connector types, one
module per connector type (webhook, slack, email, kafka, redis_stream, crm, log), the lead view and template
rendering, and the built-in `templates/`.

May import `engine.core`, `engine.events` and `engine.config` (and the client libraries of the peers); never
`engine.dispatch`, `engine.worker` or `engine.clickhouse`: the dispatcher drives connectors, not the other way.
"""
