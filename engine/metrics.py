"""Every Prometheus metric Nudge exports, defined once.

Naming follows Prometheus conventions: `nudge_` prefix, `_total` for counters, base units (`_seconds`, `_bytes`).
Label values are bounded sets (event type, reason code, rule id, connector name, outcome, partition): never a lead id,
message id or free text. Processes serve these on `/metrics` with `serve_metrics()` or through their own web server
with `render_latest()`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

# Latency buckets from 5 ms to 5 min: detections are expected within seconds, deferred deliveries take longer.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

# --- worker: input --------------------------------------------------------------------------------------------------
EVENTS_CONSUMED = Counter("nudge_events_consumed_total", "Clickstream events consumed by the worker", ["type"])
DEAD_LETTERS = Counter("nudge_dead_letters_total", "Messages sent to the dead-letter topic", ["source", "reason"])
CONSUMER_LAG = Gauge(
    "nudge_consumer_lag_messages",
    "Messages between the committed offset and the end of the log",
    ["topic", "partition"],
)
EVENT_TIME_WATERMARK = Gauge("nudge_event_time_watermark_seconds", "Worker's event-time clock (epoch seconds)")

# --- worker: rules and state ----------------------------------------------------------------------------------------
RULE_FIRES = Counter("nudge_rule_fires_total", "Actions fired by rule", ["rule", "kind"])
DETECTION_DELAY = Histogram(
    "nudge_detection_delay_seconds",
    "Wall time from the triggering event's time (or the deadline) to the action being emitted",
    ["kind"],
    buckets=DELAY_BUCKETS,
)
DEADLINE_LAG = Histogram(
    "nudge_deadline_lag_seconds",
    "How late a deadline timer fired compared with its deadline (wall clock)",
    buckets=DELAY_BUCKETS,
)
ACTIVE_LEADS = Gauge("nudge_active_leads", "Leads with state held by this worker")
STATE_BYTES = Gauge("nudge_state_bytes", "Serialized bytes of per-lead state held by this worker")
PENDING_DEADLINES = Gauge("nudge_pending_deadlines", "Deadlines waiting in this worker's timer index")
RULES_VERSION_INFO = Gauge(
    "nudge_rules_version_info",
    "1 for the rule-set version this worker evaluates with (0 for earlier ones)",
    ["version"],
)
RULES_DEPLOYS = Counter(
    "nudge_rules_deploys_total",
    "Rule-set deploys this worker saw: applied (switched to), invalid (refused, kept the active version)",
    ["result"],
)
BATCH_SIZE = Histogram(
    "nudge_worker_batch_events", "Events per processed batch", buckets=(1, 10, 100, 500, 1000, 2000, 5000, 20000)
)
HANDOVERS = Counter(
    "nudge_identity_handovers_total",
    "Identity hand-overs after identify/alias: sent to the anonymous lead's partition, merged here by the worker "
    "that owns it, or nothing to move (the anonymous id had no state)",
    ["outcome"],
)
RULE_SUPPRESSED = Counter(
    "nudge_rule_suppressed_total",
    "Firings a rule's own gates stopped in the worker: cooldown, max_per_lead or its if: condition",
    ["rule", "reason"],
)
JOURNEY_EVENTS = Counter(
    "nudge_journey_events_total",
    "Journey records the worker published on lead-updates (kind journey): event entered, reached, exited (reason "
    "exit_on, step_removed, loop_guard), completed, goal; per journey (a rule id). Per step: ClickHouse",
    ["journey", "event", "reason"],
)
REPLAYED_INPUTS = Counter(
    "nudge_worker_replayed_inputs_total",
    "Input records skipped because the lead's stored state already reflects them (replayed after a crash)",
)
OUTPUT_ERRORS = Counter(
    "nudge_worker_output_errors_total",
    "Batches of worker output (lead-state changelog, actions, control records) the broker did not accept",
    ["topic"],
)

# --- dispatcher and connectors --------------------------------------------------------------------------------------
ACTIONS = Counter(
    "nudge_actions_total",
    "Action delivery outcomes, with the reason code (empty for sent; e.g. expired, converted, unsubscribed, "
    "quiet_hours, frequency_cap, http_503)",
    ["connector", "outcome", "reason"],
)
DELIVERY_DELAY = Histogram(
    "nudge_delivery_delay_seconds",
    "Wall time from the action being fired to the peer accepting it",
    ["connector"],
    buckets=DELAY_BUCKETS,
)
CONNECTOR_RETRIES = Counter("nudge_connector_retries_total", "Retried delivery attempts", ["connector"])
CIRCUIT_STATE = Gauge(
    "nudge_connector_circuit_state", "Circuit breaker per connector: 0 closed, 1 half-open, 2 open", ["connector"]
)
CONNECTOR_INFLIGHT = Gauge("nudge_connector_inflight", "Deliveries in flight per connector", ["connector"])
DISPATCH_SCHEDULED = Gauge(
    "nudge_dispatch_scheduled_actions", "Actions in the dispatcher's durable schedule (deferred or retrying)"
)
DISPATCH_LEAD_UPDATES = Counter(
    "nudge_dispatch_lead_updates_total",
    "lead-updates records the dispatcher folded into its send-time re-check state: converted, consent_withdrawn, "
    "consent_given; ignored (other kinds), invalid",
    ["kind"],
)
for _kind in ("converted", "consent_withdrawn", "consent_given", "ignored", "invalid"):
    DISPATCH_LEAD_UPDATES.labels(_kind)
REDIS_MEMORY_USED_RATIO = Gauge(
    "nudge_redis_memory_used_ratio",
    "Redis used_memory / its limit, polled by the dispatcher: limit=maxmemory, or limit=system (the host's memory) "
    "when Redis has no maxmemory",
    ["limit"],
)

# --- sink -----------------------------------------------------------------------------------------------------------
CLICKHOUSE_ROWS = Counter("nudge_clickhouse_insert_rows_total", "Rows inserted into ClickHouse", ["table"])
CLICKHOUSE_INSERT_SECONDS = Histogram(
    "nudge_clickhouse_insert_duration_seconds", "ClickHouse batch insert latency", ["table"], buckets=DELAY_BUCKETS
)
CLICKHOUSE_ERRORS = Counter("nudge_clickhouse_insert_errors_total", "Failed ClickHouse insert attempts", ["table"])
SINK_BUFFERED_ROWS = Gauge("nudge_sink_buffered_rows", "Rows waiting in the sink's buffer", ["table"])
SINK_SKIPPED = Counter(
    "nudge_sink_skipped_records_total", "Records the sink could not store (invalid, malformed)", ["topic", "reason"]
)

# --- collector ------------------------------------------------------------------------------------------------------
COLLECTOR_REQUESTS = Counter(
    "nudge_collector_requests_total", "HTTP requests to the collector", ["endpoint", "status"]
)
COLLECTOR_EVENTS = Counter("nudge_collector_events_total", "Events accepted by the collector", ["type", "outcome"])
UNSUBSCRIBE_RESULTS = (
    "shown", "unsubscribed", "missing", "malformed", "expired", "forged", "no_secret", "unavailable"
)
UNSUBSCRIBE_REQUESTS = Counter(
    "nudge_unsubscribe_requests_total",
    "Requests to the collector's /v1/unsubscribe: shown (the confirmation page), unsubscribed (recorded), refused "
    "links (missing, malformed, expired, forged, no_secret: 403) and unavailable (broker or Redis down: 503)",
    ["result"],
)
for _result in UNSUBSCRIBE_RESULTS:
    UNSUBSCRIBE_REQUESTS.labels(_result)

# --- lead assignment ----------------------------------------------------------------------------------------
ASSIGNMENTS = Counter(
    "nudge_assignments_total",
    "Assignment calls by outcome: assigned, existing (already owned), reassigned, unassigned (nobody free)",
    ["outcome"],
)
ASSIGNMENT_RETRIES = Counter(
    "nudge_assignment_retries_total", "Assignment commits rejected: another process changed the state first"
)
SLA_BREACHES = Counter(
    "nudge_sla_breaches_total",
    "Hot leads not acknowledged in time, by outcome: reassigned, kept, exhausted",
    ["outcome"],
)
ASSIGNMENT_QUEUE_LENGTH = Gauge(
    "nudge_assignment_queue_length",
    "Hot leads waiting for a rep (every eligible rep at capacity), as each `nudge reps serve` sees it",
)
ASSIGNMENT_QUEUE_OLDEST = Gauge(
    "nudge_assignment_queue_oldest_seconds",
    "How long the longest-waiting hot lead has waited for a rep (0: none waits)",
)
ASSIGNMENT_WAIT = Histogram(
    "nudge_assignment_wait_seconds",
    "Time from a hot lead's first assignment request to its owner (0 when a rep was free at once)",
    buckets=(0.005, 1, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400),
)
ASSIGNMENT_CHANGES = Counter(
    "nudge_assignment_changes_total",
    "Assignment changes made by hand or by the lifecycle: acked, passed, released, reassigned (to a named rep), "
    "queue_alerted",
    ["change"],
)
REPS_AUTH_FAILURES = Counter(
    "nudge_reps_auth_failures_total",
    "Requests to `nudge reps serve` refused: bad_token, no_session, bad_csrf, forged_link, expired_link, "
    "malformed_link",
    ["reason"],
)
for _change in ("acked", "passed", "released", "reassigned", "queue_alerted"):
    ASSIGNMENT_CHANGES.labels(_change)
for _reason in ("bad_token", "no_session", "bad_csrf", "forged_link", "expired_link", "malformed_link"):
    REPS_AUTH_FAILURES.labels(_reason)


def render_latest() -> tuple[bytes, str]:
    """Body and content type of the `/metrics` response for the default registry."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve `/metrics` on its own port (for processes without a web server of their own)."""
    start_http_server(port, addr=host)

# --- privacy (docs/privacy.md) ------------------------------------------------------------------------------
PRIVACY_REQUESTS = Counter(
    "nudge_privacy_requests_total",
    "Privacy requests by store and step: accepted (a request id given out), worker ops (erase, suppress, "
    "unsuppress), completed (every store confirmed)",
    ["store", "step"],
)
PRIVACY_DROPPED_EVENTS = Counter(
    "nudge_privacy_dropped_events_total",
    "Events of suppressed leads dropped, never stored nor dead-lettered: at the collector's edge or in the worker",
    ["source"],
)
PRIVACY_PENDING = Gauge(
    "nudge_privacy_pending_requests",
    "Privacy requests accepted and not yet confirmed by every store, as one collector's coordinator sees them",
)
WORKER_IDLE_LEADS_DROPPED = Counter(
    "nudge_worker_idle_leads_dropped_total",
    "Lead states dropped from the worker's table after NUDGE_LEAD_IDLE_DAYS without a write and with no pending "
    "deadline",
)
for _source in ("collector", "worker"):
    PRIVACY_DROPPED_EVENTS.labels(_source)
for _store, _step in (("collector", "accepted"), ("worker", "erase"), ("worker", "suppress"),
                      ("worker", "unsuppress"), ("coordinator", "completed")):  # fmt: skip
    PRIVACY_REQUESTS.labels(_store, _step)
