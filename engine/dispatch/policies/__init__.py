"""The delivery policies the dispatcher applies to each action, one module each: idempotency claims, frequency
caps (per lead and per recipient address), quiet hours, consent, the re-check at send time (expiry, conversion,
current consent), retry backoff, circuit breaker; each with the config model of its `connectors.yaml` section.

May import `connectors` (the lead view), `engine.redis_claims`, `engine.core`, `engine.config`, `engine.metrics`,
Redis and pydantic; nothing else of `engine.dispatch`, so every policy stays usable and testable on its own.
"""
