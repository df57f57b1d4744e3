"""The Segment-compatible HTTP collector: SDK traffic in, acknowledged `clickstream` records out.

Modules, one concept each: `auth` (write keys and their kind), `trust` (what a request proved: the signed user
hash, the `context.nudge` mark, protected traits), `limits` (rate limits per write key and client address),
`decoding` (size limits, the body's time bound, gzip, JSON), `normalise` (request → validated events), `event_time`
(device clock skew and the future bound), `identity` (profiles, known leads, guarded anonymous → known id merges,
re-keying), `dedupe` (messageId claims in Redis), `producer` (the Kafka shell), `analytics_js` (the settings
document analytics.js loads), `app` (the aiohttp routes tying them together; run it with `nudge collector`).

May import `engine.events`, `engine.kafka`, `engine.redis_claims`, `engine.config`, `engine.metrics`, aiohttp,
aiokafka and Redis; nothing of the core's evaluation, the worker, the dispatcher, the sink or assignment.
"""

from engine.collector.app import create_app

__all__ = ["create_app"]
