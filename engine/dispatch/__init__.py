"""`nudge dispatch`: the dispatcher loop (`dispatcher`), one action's way through the policies to its connector
(`delivery`), outcome records (`outcomes`), safe offsets (`offsets`), the durable Redis schedule (`schedule`), the
hot-lead flow (`hot_leads`), the connectors file and what the rule validator asks of it (`config`: connector
names, `template_exists`), secret redaction (`redaction`) and re-driving dead
letters (`redrive`); the delivery policies live in `policies/`.

May import `connectors`, `engine.assignment`, `engine.kafka`, `engine.redis_claims`, `engine.core`, `engine.config`,
`engine.metrics`, aiokafka and Redis; never the worker, the sink or the collector.
"""
