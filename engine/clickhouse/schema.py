"""The ClickHouse schema, as versioned migrations. Append a new `Migration`; never edit one that has
shipped.

Why these choices (docs/clickhouse.md says the same for operators):
- Every table is a `ReplacingMergeTree` whose ORDER BY ends in a natural unique key (message id; action id +
  step + attempt; the Kafka coordinates of a dead letter / lead update). A batch the sink inserts twice
  (crash between insert and offset commit, producer retries, a worker re-emitting an action after a restart)
  collapses to one row, and KPI queries read with `FINAL` so they never count a duplicate that a merge has
  not removed yet.
- Partitions are by month of event time: TTL drops whole parts cheaply and time-bounded queries prune
  partitions.
- `events` is ordered `(lead_id, timestamp, message_id)`: per-lead history (replay, `leads show`, funnels
  per lead) reads one contiguous range; per-time queries use the partition key and the minmax index on
  `timestamp`.
- `actions` is ordered `(rule, lead_id, action_id, step, attempt)`: per-rule KPIs read contiguous ranges.
- Codecs: Delta+ZSTD for timestamps (monotonic within a lead), ZSTD(3) for JSON text (repetitive, rarely
  read), LowCardinality for small vocabularies (event type/name, rule, connector, step, reason).
- TTLs: events 400 days (a year-over-year view), actions and lead updates 2 years (attribution audits), dead
  letters 30 days (a debugging aid, re-drive them before that). The first three follow NUDGE_RETENTION_DAYS and
  NUDGE_ACTIONS_RETENTION_DAYS (`RETENTION_TTL`, applied by the sink at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step. Statements must be idempotent (IF NOT EXISTS): a crash mid-way is rerun safely."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS_TABLE = "nudge_schema_migrations"

_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    message_id String,
    lead_id String,
    type LowCardinality(String),
    name LowCardinality(String),
    timestamp DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    received_at Nullable(DateTime64(3, 'UTC')),
    user_id String,
    anonymous_id String,
    previous_id String,
    revenue Nullable(Float64),
    properties String CODEC(ZSTD(3)),
    traits String CODEC(ZSTD(3)),
    context String CODEC(ZSTD(3)),
    raw String CODEC(ZSTD(3)),
    kafka_partition UInt16,
    kafka_offset UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_timestamp timestamp TYPE minmax GRANULARITY 1,
    INDEX idx_name name TYPE set(256) GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (lead_id, timestamp, message_id)
TTL toDateTime(timestamp) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000
"""

_ACTIONS = """
CREATE TABLE IF NOT EXISTS actions (
    action_id String,
    step LowCardinality(String),
    attempt UInt16,
    at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    rule LowCardinality(String),
    rule_version LowCardinality(String),
    lead_id String,
    connector LowCardinality(String),
    trigger Array(String),
    trigger_time Nullable(DateTime64(3, 'UTC')),
    fired_at Nullable(DateTime64(3, 'UTC')),
    emitted_at Nullable(DateTime64(3, 'UTC')),
    explanation String CODEC(ZSTD(3)),
    reason String,
    latency_ms Nullable(UInt32),
    next_attempt_at Nullable(DateTime64(3, 'UTC')),
    priority Int16,
    marketing Bool,
    rep String,
    action String CODEC(ZSTD(3)),
    kafka_topic LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (rule, lead_id, action_id, step, attempt)
TTL toDateTime(at) + INTERVAL 730 DAY
SETTINGS non_replicated_deduplication_window = 1000
"""

_DEAD_LETTERS = """
CREATE TABLE IF NOT EXISTS dead_letters (
    at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    reason LowCardinality(String),
    detail String,
    payload String CODEC(ZSTD(3)),
    payload_encoding LowCardinality(String),
    original_topic String,
    original_partition Nullable(Int32),
    original_offset Nullable(Int64),
    original_key String,
    kafka_partition UInt16,
    kafka_offset UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (source, reason, at, kafka_partition, kafka_offset)
TTL toDateTime(at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000
"""

_LEAD_UPDATES = """
CREATE TABLE IF NOT EXISTS lead_updates (
    lead_id String,
    at DateTime64(3, 'UTC'),
    kind LowCardinality(String),
    rep String,
    payload String CODEC(ZSTD(3)),
    kafka_partition UInt16,
    kafka_offset UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (lead_id, at, kafka_partition, kafka_offset)
TTL toDateTime(at) + INTERVAL 730 DAY
SETTINGS non_replicated_deduplication_window = 1000
"""

# The audit trail of privacy requests (engine/clickhouse/erasure.py): never the erased id, only its keyed hash.
# No TTL: a receipt is the proof that an erasure happened.
_PRIVACY_RECEIPTS = """
CREATE TABLE IF NOT EXISTS privacy_receipts (
    request_id String,
    type LowCardinality(String),
    subject_hash String,
    requested_at DateTime64(3, 'UTC'),
    completed_at DateTime64(3, 'UTC'),
    reason String,
    counts String,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(completed_at)
ORDER BY request_id
"""

# Experiments (issue 19, docs/experiments.md): views over the worker's `kind: experiment` lead updates and the fired
# actions, so analysts can query arms themselves. A person counts once: ids merged by identify/alias map to the id
# they were merged into (the same mapping as the KPIs), and a person keeps the arm of their first assignment.
# Replayed records (same content, other Kafka offsets) collapse: assignments by (experiment, person), goals by the
# goal event's message id.
_PERSON = "if(m.to_id = '', u.lead_id, m.to_id)"
_MERGES = (
    "SELECT from_id, argMax(to_id, timestamp) AS to_id FROM ("
    " SELECT if(type = 'alias', previous_id, anonymous_id) AS from_id, user_id AS to_id, timestamp FROM events"
    " WHERE type IN ('identify', 'alias') AND user_id != '' AND from_id != '' AND from_id != user_id"
    ") GROUP BY from_id"
)
_EXPERIMENT_ASSIGNMENTS = f"""
CREATE VIEW IF NOT EXISTS experiment_assignments AS
SELECT JSONExtractString(u.payload, 'experiment') AS experiment, {_PERSON} AS person,
       argMin(JSONExtractString(u.payload, 'variant'), u.at) AS variant,
       argMin(JSONExtractString(u.payload, 'rule'), u.at) AS rule,
       argMin(u.lead_id, u.at) AS lead_id,
       min(u.at) AS assigned_at
FROM lead_updates AS u FINAL LEFT JOIN ({_MERGES}) AS m ON m.from_id = u.lead_id
WHERE u.kind = 'experiment' AND JSONExtractString(u.payload, 'event') = 'assigned'
GROUP BY experiment, person
SETTINGS join_use_nulls = 0
"""
_EXPERIMENT_GOALS = f"""
CREATE VIEW IF NOT EXISTS experiment_goals AS
SELECT JSONExtractString(u.payload, 'experiment') AS experiment, {_PERSON} AS person,
       JSONExtractString(u.payload, 'message_id') AS message_id,
       argMin(JSONExtractString(u.payload, 'variant'), u.at) AS variant,
       min(u.at) AS at,
       any(JSONExtract(u.payload, 'value', 'Nullable(Float64)')) AS value
FROM lead_updates AS u FINAL LEFT JOIN ({_MERGES}) AS m ON m.from_id = u.lead_id
WHERE u.kind = 'experiment' AND JSONExtractString(u.payload, 'event') = 'goal'
GROUP BY experiment, person, message_id
SETTINGS join_use_nulls = 0
"""
# One row per fired action in an experiment: its arm (on the fired row) and whether it was ever sent / held out.
_EXPERIMENT_ACTIONS = """
CREATE VIEW IF NOT EXISTS experiment_actions AS
SELECT f.experiment AS experiment, f.variant AS variant, f.action_id AS action_id, f.lead_id AS lead_id,
       f.rule AS rule, f.fired_at AS fired_at, f.held_out OR o.held_out > 0 AS held_out, o.sent > 0 AS sent
FROM (
    SELECT r.action_id AS action_id, any(r.experiment) AS experiment, any(r.variant) AS variant,
           any(r.lead_id) AS lead_id, any(r.rule) AS rule, min(r.at) AS fired_at, max(r.held_out) AS held_out
    FROM actions AS r FINAL WHERE r.step = 'fired' AND r.experiment != '' GROUP BY r.action_id
) AS f
LEFT JOIN (
    SELECT action_id, countIf(step = 'sent') AS sent, countIf(step = 'held_out') AS held_out
    FROM actions FINAL WHERE step IN ('sent', 'held_out') GROUP BY action_id
) AS o ON o.action_id = f.action_id
SETTINGS join_use_nulls = 0
"""
# One row per experiment and person: arm, assignment time, goal events, revenue, actions sent / held out (a person
# without any reads 0: join_use_nulls = 0 is explicit on every view, as a view's columns must not change type with
# the session's setting).
_EXPERIMENT_LEADS = f"""
CREATE VIEW IF NOT EXISTS experiment_leads AS
SELECT a.experiment AS experiment, a.variant AS variant, a.rule AS rule, a.person AS person,
       a.lead_id AS lead_id, a.assigned_at AS assigned_at,
       g.goals AS goals, g.revenue AS revenue, x.sent AS actions_sent, x.held_out AS actions_held_out
FROM experiment_assignments AS a
LEFT JOIN (
    SELECT q.experiment AS experiment, q.person AS person, count() AS goals, sum(ifNull(q.value, 0)) AS revenue
    FROM experiment_goals AS q GROUP BY q.experiment, q.person
) AS g ON g.experiment = a.experiment AND g.person = a.person
LEFT JOIN (
    SELECT x.experiment AS experiment, {_PERSON.replace("u.", "x.")} AS person,
           countIf(x.sent) AS sent, countIf(x.held_out) AS held_out
    FROM experiment_actions AS x LEFT JOIN ({_MERGES}) AS m ON m.from_id = x.lead_id
    GROUP BY x.experiment, person
) AS x ON x.experiment = a.experiment AND x.person = a.person
SETTINGS join_use_nulls = 0
"""
# Per experiment and arm, all time (`nudge report experiments` applies its window to experiment_leads instead).
_EXPERIMENT_ARMS = """
CREATE VIEW IF NOT EXISTS experiment_arms AS
SELECT l.experiment AS experiment, l.variant AS variant, any(l.rule) AS rule, count() AS leads,
       countIf(l.goals > 0) AS conversions, conversions / leads AS conversion_rate, sum(l.revenue) AS revenue,
       revenue / leads AS revenue_per_lead, sum(l.revenue * l.revenue) AS revenue_sq,
       sum(l.actions_sent) AS actions_sent, sum(l.actions_held_out) AS actions_held_out,
       min(l.assigned_at) AS first_assigned_at, max(l.assigned_at) AS last_assigned_at
FROM experiment_leads AS l
GROUP BY l.experiment, l.variant
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "events, actions, dead letters, lead updates", (_EVENTS, _ACTIONS, _DEAD_LETTERS, _LEAD_UPDATES)
    ),
    Migration(2, "privacy receipts", (_PRIVACY_RECEIPTS,)),
    # The journey step an action was sent from (Action.step; '' for other rule kinds). `step` already names the
    # delivery step (fired, sent, ...), hence the longer name.
    Migration(
        3,
        "actions.journey_step",
        ("ALTER TABLE actions ADD COLUMN IF NOT EXISTS journey_step LowCardinality(String) DEFAULT '' AFTER rule",),
    ),
    # Experiments (docs/rules.md): the experiment and arm of an action (variant id, `treatment`, or `holdout`) and
    # whether it was held out (fired and logged, never sent); '' / false outside experiments.
    Migration(
        4,
        "actions.experiment, variant, held_out",
        (
            "ALTER TABLE actions ADD COLUMN IF NOT EXISTS experiment LowCardinality(String) DEFAULT ''",
            "ALTER TABLE actions ADD COLUMN IF NOT EXISTS variant LowCardinality(String) DEFAULT ''",
            "ALTER TABLE actions ADD COLUMN IF NOT EXISTS held_out Bool DEFAULT false",
        ),
    ),
    Migration(
        5,
        "experiment views: assignments, goals, actions, leads, arms",
        (_EXPERIMENT_ASSIGNMENTS, _EXPERIMENT_GOALS, _EXPERIMENT_ACTIONS, _EXPERIMENT_LEADS, _EXPERIMENT_ARMS),
    ),
    # The rule-set version (`nudge rules deploy`) the worker fired an action with, besides its rule's version; on
    # the fired row ('' on delivery rows and on actions fired before rule-set versions).
    Migration(
        6,
        "actions.rules_version",
        ("ALTER TABLE actions ADD COLUMN IF NOT EXISTS rules_version LowCardinality(String) DEFAULT ''",),
    ),
)

# Retention set by NUDGE_RETENTION_DAYS (events) and NUDGE_ACTIONS_RETENTION_DAYS (actions, lead updates): applied
# by `engine.clickhouse.migrations.apply_retention` whenever it differs from the table's TTL. The migrations above
# create the tables with the defaults (400 and 730 days).
RETENTION_TTL = {
    "events": "toDateTime(timestamp) + INTERVAL {days} DAY",
    "actions": "toDateTime(at) + INTERVAL {days} DAY",
    "lead_updates": "toDateTime(at) + INTERVAL {days} DAY",
}
