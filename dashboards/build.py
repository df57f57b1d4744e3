"""Build Nudge's Grafana dashboards (dashboards/*.json) from code.

Contract:
- The dashboards are written with the typed builders of `grafana-foundation-sdk` pinned to Grafana 11.6
  (dev extra), so every field has the shape Grafana 11.6 expects (schemaVersion 41). The generated JSON is
  committed: Grafana provisioning reads it, and nothing at run time needs this script.
- Every query uses only metrics defined in `engine/metrics.py`, plus `up` (written by Prometheus itself) and
  the `process_*` metrics prometheus-client exports from every process. tests/dashboards/ evaluates every
  query against a live Prometheus scraping the engine.
- Panel ids and query refIds are assigned here, so the output is deterministic: `--check` fails (exit 1)
  when a committed file differs from what this script builds, which keeps code and JSON from drifting apart.

Run: `.venv/bin/python dashboards/build.py` (write) or `... --check` (verify).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import barchart, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from panels import (
    CLICKHOUSE_TABLE,
    CLICKHOUSE_TIME_SERIES,
    DATASOURCE,
    RATE,
    bucket_heatmap,
    clickhouse_framed,
    instant_table,
    quantiles,
    single,
    state_timeline,
    thresholds,
    ts,
)

from engine.clickhouse.experiments import uplift_sql

HERE = Path(__file__).resolve().parent
NUDGE_JOBS = 'job=~"nudge-.*"'
# Every process registers every metric of engine/metrics.py, so unlabelled worker gauges also appear (as 0) on
# the collector, dispatcher and sink: select the workers' own series.
BEHIND = 'time() - (nudge_event_time_watermark_seconds{job="nudge-worker"} > 0)'
# Lag per partition, counted once even if a worker that lost the partition in a rebalance still reports it.
LAG = "max by (topic, partition) (nudge_consumer_lag_messages)"
BLUE = thresholds((None, "blue"))


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list[Any]]]) -> db.Dashboard:
    """A Nudge dashboard: UTC, 10 s refresh, a `$datasource` picker, links to its siblings, then `rows`."""
    dash = (
        db.Dashboard(title).uid(uid).description(description).tags(["nudge"]).timezone("utc").refresh("10s")
        .time("now-1h", "now").tooltip(dm.DashboardCursorSync.CROSSHAIR).editable()
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .link(
            db.DashboardLink("Nudge dashboards").type(dm.DashboardLinkType.DASHBOARDS).tags(["nudge"])
            .as_dropdown(True).include_vars(True).keep_time(True)
        )
    )
    for row_title, row_panels in rows:
        dash = dash.with_row(db.Row(row_title))
        for panel in row_panels:
            dash = dash.with_panel(panel)
    return dash


def query_variable(name: str, label: str, metric: str, label_name: str) -> db.QueryVariable:
    """A multi-select variable listing the values of `label_name` on `metric`; "All" matches every value."""
    return (
        db.QueryVariable(name).label(label).datasource(DATASOURCE)
        .query(f"label_values({metric}, {label_name})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*")
    )


def rate(metric: str, by: str, where: str = "") -> str:
    selector = f"{metric}{{{where}}}" if where else metric
    return f"sum by ({by}) (rate({selector}[{RATE}]))"


def legend(by: str) -> str:
    return " ".join("{{" + label.strip() + "}}" for label in by.split(","))


def overview() -> db.Dashboard:
    final = f'sum(rate(nudge_actions_total{{outcome=~"sent|failed"}}[{RATE}]))'
    at_a_glance = [
        single("Events / s", "Clickstream events consumed by all workers.",
               f"sum(rate(nudge_events_consumed_total[{RATE}]))", "ops", BLUE),
        single("Actions fired / s", "Actions emitted by all rules.",
               f"sum(rate(nudge_rule_fires_total[{RATE}]))", "ops", BLUE),
        single("Delivered", "Share of final delivery outcomes that were sent (the rest failed).",
               f'sum(rate(nudge_actions_total{{outcome="sent"}}[{RATE}])) / {final}', "percentunit",
               thresholds((None, "red"), (0.95, "yellow"), (0.99, "green"))),
        single("Consumer lag", "Messages the workers have not processed yet, all partitions.",
               f"sum({LAG})", "short",
               thresholds((None, "green"), (1000, "yellow"), (10000, "red"))),
        single("Detection delay p95", "Event time (or deadline) to action emitted.",
               quantiles("nudge_detection_delay_seconds", qs=(0.95,))[0][0], "s",
               thresholds((None, "green"), (2, "yellow"), (10, "red"))),
        single("Dead letters / s", "Messages rejected to the dead-letter topic.",
               f"sum(rate(nudge_dead_letters_total[{RATE}]))", "ops",
               thresholds((None, "green"), (0.1, "yellow"), (1, "red"))),
    ]
    flow = [
        ts("Events consumed by type", "Clickstream events per second, by Segment call type.",
           [(rate("nudge_events_consumed_total", "type"), "{{type}}")], "ops", stack=True),
        ts("Actions fired by rule", "Actions per second, by rule.",
           [(rate("nudge_rule_fires_total", "rule"), "{{rule}}")], "ops", stack=True),
        ts("Firings stopped by rule gates", "Firings a rule's own cooldown, max_per_lead or if: condition "
           "stopped, by rule and reason (`nudge simulate --explain` shows them per lead).",
           [(rate("nudge_rule_suppressed_total", "rule, reason"), legend("rule, reason"))], "ops", stack=True),
        ts("Delivery outcomes", "Dispatcher outcomes per second: sent, retried, failed, suppressed, "
           "deferred, duplicate.", [(rate("nudge_actions_total", "outcome"), "{{outcome}}")], "ops"),
        ts("Detection delay", "Wall time from the triggering event's time (or the deadline) to the action "
           "being emitted.", quantiles("nudge_detection_delay_seconds"), "s"),
    ]
    keeping_up = [
        ts("Consumer lag by topic", "Messages between the committed offset and the end of the log.",
           [(f"sum by (topic) ({LAG})", "{{topic}}")], "short", w=8),
        ts("Event-time clock behind wall clock", "How far each worker's event-time clock trails the wall "
           "clock (includes the allowed lateness).",
           [(BEHIND, "{{instance}}")], "s", w=8),
        ts("Delivery delay p95 by connector", "Action fired to the peer accepting it.",
           quantiles("nudge_delivery_delay_seconds", "connector", (0.95,)), "s", w=8),
    ]
    return dashboard(
        "nudge-overview", "Nudge / Overview",
        "Does Nudge keep up with the clickstream, and do its actions land? Start here.",
        [("At a glance", at_a_glance), ("Flow", flow), ("Keeping up", keeping_up)],
    )


def rules_and_actions() -> db.Dashboard:
    rule, conn = 'rule=~"$rule"', 'connector=~"$connector"'
    failed = rate("nudge_actions_total", "connector", f'{conn}, outcome="failed"')
    # `or ... * 0`: connectors that never failed show 0 instead of no data.
    final = rate("nudge_actions_total", "connector", f'{conn}, outcome=~"sent|failed"')
    ratio = f'({failed} or {rate("nudge_actions_total", "connector", conn)} * 0) / {final}'
    rules = [
        ts("Fires by rule", "Actions per second, by rule.",
           [(rate("nudge_rule_fires_total", "rule", rule), "{{rule}}")], "ops"),
        instant_table("Fires in the selected range", "Actions fired per rule and kind over the time range.",
                      f"sort_desc(sum by (rule, kind) "
                      f"(increase(nudge_rule_fires_total{{{rule}}}[$__range])))"),
        ts("Fires by rule kind", "Actions per second by kind (abandonment, threshold, sequence, score).",
           [(rate("nudge_rule_fires_total", "kind", rule), "{{kind}}")], "ops", stack=True),
        ts("Detection delay p95 by kind", "Event time (or deadline) to action emitted.",
           quantiles("nudge_detection_delay_seconds", "kind", (0.95,)), "s"),
        bucket_heatmap("Detection delay distribution", "Actions emitted per delay bucket.",
                       "nudge_detection_delay_seconds", "s"),
        ts("Deadline timer lag", "How late deadline timers fire compared with their deadline.",
           quantiles("nudge_deadline_lag_seconds", qs=(0.5, 0.99)), "s", w=6),
        ts("Pending deadlines", "Deadlines waiting in each worker's timer index.",
           [('sum by (instance) (nudge_pending_deadlines{job="nudge-worker"})', "{{instance}}")], "short",
           w=6),
        ts("Rule-set version by worker", "The rule-set version each worker evaluates with (`nudge rules status`); "
           "two versions for more than a minute: workers disagree (alert NudgeRulesVersionsDisagree).",
           [('max by (instance, version) (nudge_rules_version_info{job="nudge-worker"} == 1)',
             "{{instance}} {{version}}")], "short", w=12),
        ts("Rule deploys", "Deploys the workers switched to (applied) or refused (invalid for that worker, e.g. "
           "a connector its connectors file lacks; it keeps its version).",
           [(rate("nudge_rules_deploys_total", "result"), "{{result}}")], "ops", w=12),
    ]
    connectors = [
        ts("Outcomes by connector", "Dispatcher outcomes per second.",
           [(rate("nudge_actions_total", "connector, outcome", conn), legend("connector, outcome"))], "ops"),
        ts("Failure ratio by connector", "failed / (sent + failed) final outcomes.",
           [(ratio, "{{connector}}")], "percentunit", limits=thresholds((None, "green"), (0.05, "red"))),
        ts("Delivery delay by connector", "Action fired to the peer accepting it (p50, p95).",
           quantiles("nudge_delivery_delay_seconds", "connector", (0.5, 0.95), where=conn), "s"),
        state_timeline("Circuit breaker by connector",
                       "Closed: deliveries flow. Half-open: probing the peer. Open: the peer fails, "
                       "deliveries wait.",
                       f"max by (connector) (nudge_connector_circuit_state{{{conn}}})", "{{connector}}",
                       [("closed", "green"), ("half-open", "yellow"), ("open", "red")]),
        ts("Retries by connector", "Retried delivery attempts per second.",
           [(rate("nudge_connector_retries_total", "connector", conn), "{{connector}}")], "ops", w=8),
        ts("Deliveries in flight", "Concurrent deliveries per connector (bounded by its limit).",
           [(f"sum by (connector) (nudge_connector_inflight{{{conn}}})", "{{connector}}")], "short", w=8),
        ts("Scheduled actions", "Actions waiting in the dispatcher's durable schedule (deferred by caps or "
           "quiet hours, or waiting for a retry).",
           [('sum by (instance) (nudge_dispatch_scheduled_actions{job="nudge-dispatcher"})', "{{instance}}")],
           "short", w=8),
        ts("Not sent (yet), by reason", "Outcomes other than sent, by outcome and reason: suppressed at send "
           "time (expired, converted, unsubscribed, consent_withdrawn), held back (quiet_hours, frequency_cap), "
           "retried or failed (the peer's answer).",
           [(rate("nudge_actions_total", "outcome, reason", f'{conn}, outcome!~"sent|duplicate"'),
             legend("outcome, reason"))], "ops", w=12),
        ts("Re-check updates from the worker", "lead-updates records the dispatcher folds into its send-time "
           "re-check: conversions and consent changes (ignored: other kinds; invalid: unreadable).",
           [(rate("nudge_dispatch_lead_updates_total", "kind"), "{{kind}}")], "ops", w=12),
    ]
    journey = 'journey=~"$rule"'  # a journey's id is its rule id
    journeys = [
        ts("Journey entries, completions and goals", "Leads entering each journey, completing it (end: true or "
           "off the last step) and reaching its goal: (converted within goal_within), per second.",
           [(rate("nudge_journey_events_total", "journey, event", f'{journey}, event=~"entered|completed|goal"'),
             legend("journey, event"))], "ops"),
        ts("Journey exits by reason", "Leads leaving a journey early: exit_on (its exit event), step_removed (the "
           "step it waited at was edited away), loop_guard. Per step: nudge report --journeys.",
           [(rate("nudge_journey_events_total", "journey, reason", f'{journey}, event="exited"'),
             legend("journey, reason"))], "ops"),
        instant_table("Journeys in the selected range", "Journey records per journey and event (steps reached, "
                      "exits by reason) over the time range; per step in ClickHouse (nudge report --journeys).",
                      f"sort_desc(sum by (journey, event, reason) "
                      f"(increase(nudge_journey_events_total{{{journey}}}[$__range])))", w=24),
    ]
    assignment = [
        ts("Hot-lead assignments", "Assignment calls by outcome: assigned, existing, reassigned, unassigned "
           "(no rep free).", [(rate("nudge_assignments_total", "outcome"), "{{outcome}}")], "ops", w=8),
        ts("SLA breaches", "Hot leads not acknowledged in time, by what happened next.",
           [(rate("nudge_sla_breaches_total", "outcome"), "{{outcome}}")], "ops", w=8),
        ts("Assignment contention", "Assignment commits retried because another process changed the state.",
           [("sum(rate(nudge_assignment_retries_total[$__rate_interval]))", "retries")], "ops", w=8),
        # The queue gauges are set by `nudge reps serve`; every other process exports them as 0.
        ts("Hot leads waiting for a rep", "Leads in the assignment queue: every eligible rep was at capacity "
           "(or away) when they became hot.",
           [('max(nudge_assignment_queue_length{job="nudge-reps"})', "waiting")], "short", w=8),
        ts("Longest wait for a rep", "How long the longest-waiting hot lead has waited; the team channel hears "
           "about a lead after the roster's queue_alert_after.",
           [('max(nudge_assignment_queue_oldest_seconds{job="nudge-reps"})', "oldest")], "s", w=8),
        ts("Wait for a rep", "Assignment request to owner (0 when a rep was free at once), p50 and p95.",
           quantiles("nudge_assignment_wait_seconds", qs=(0.5, 0.95)), "s", w=8),
        ts("Assignment changes", "Acknowledged, passed, released, reassigned by hand, queue alerts sent.",
           [(rate("nudge_assignment_changes_total", "change"), "{{change}}")], "ops", w=12),
        ts("Refused reps requests", "Requests to nudge reps serve refused: bad API token, no inbox session, "
           "bad CSRF token, forged / expired / malformed signed link.",
           [(rate("nudge_reps_auth_failures_total", "reason"), "{{reason}}")], "ops", w=12),
    ]
    dash = dashboard(
        "nudge-rules-actions", "Nudge / Rules & actions",
        "What each rule fires, how fast, how leads go through journeys, what happens to its actions at each "
        "connector, who gets hot leads.",
        [("Rules", rules), ("Journeys", journeys), ("Actions and connectors", connectors),
         ("Sales assignment", assignment)],
    )
    return (dash.with_variable(query_variable("rule", "Rule", "nudge_rule_fires_total", "rule"))
            .with_variable(query_variable("connector", "Connector", "nudge_actions_total", "connector")))


def pipeline_health() -> db.Dashboard:
    processes = [
        ts("Targets up", "Scraped Nudge processes per job (one per healthy replica).",
           [(f"sum by (job) (up{{{NUDGE_JOBS}}})", "{{job}}")], "short", w=8),
        ts("CPU", "CPU seconds per second, per process.",
           [(rate("process_cpu_seconds_total", "job, instance", NUDGE_JOBS), legend("job, instance"))],
           "percentunit", w=8),
        ts("Resident memory", "Resident set size per process.",
           [(f"process_resident_memory_bytes{{{NUDGE_JOBS}}}", legend("job, instance"))], "bytes", w=8),
        # Polled by the dispatcher(s): every replica reads the same Redis, so take the highest reading.
        ts("Redis memory", "Redis used_memory as a share of its maxmemory (limit=system: of the host's memory, "
           "when Redis has no maxmemory). With noeviction, Redis refuses writes at 100%.",
           [('max by (limit) (nudge_redis_memory_used_ratio{job="nudge-dispatcher"})', "of {{limit}}")],
           "percentunit", w=24, h=6, limits=thresholds((None, "green"), (0.8, "red"))),
    ]
    workers = [
        ts("Consumer lag per partition", "Messages between the committed offset and the end of the log.",
           [(LAG, "{{topic}}/{{partition}}")], "short",
           limits=thresholds((None, "green"), (10000, "red"))),
        ts("Event-time clock behind wall clock", "Per worker; grows when a worker falls behind or the "
           "clickstream goes quiet.", [(BEHIND, "{{instance}}")], "s"),
        ts("Batch size", "Events per processed batch (p50, p95).",
           quantiles("nudge_worker_batch_events", qs=(0.5, 0.95)), "short", w=8),
        ts("Active leads", "Leads with state held, per worker.",
           [('sum by (instance) (nudge_active_leads{job="nudge-worker"})', "{{instance}}")], "short", w=8),
        ts("State size", "Serialized per-lead state held, per worker.",
           [('sum by (instance) (nudge_state_bytes{job="nudge-worker"})', "{{instance}}")], "bytes", w=8),
        ts("Identity hand-overs", "After identify/alias: merged in place by the partition's owner, nothing to "
           "move (the anonymous id had no state), or sent to the anonymous lead's partition.",
           [(rate("nudge_identity_handovers_total", "outcome"), "{{outcome}}")], "ops", w=8),
        ts("Worker output errors", "Batches of worker output (lead-state changelog, actions, hand-over records) "
           "the broker did not accept; the worker then stops instead of committing their input.",
           [(rate("nudge_worker_output_errors_total", "topic"), "{{topic}}")], "ops", w=8),
        ts("Replayed input skipped", "Records a restarted worker read again but skipped because the lead's stored "
           "state already reflects them; a burst after each restart is normal.",
           [('sum by (instance) (rate(nudge_worker_replayed_inputs_total{job="nudge-worker"}[' + RATE + "]))",
             "{{instance}}")], "ops", w=8),
        ts("Dead letters by source and reason", "Messages rejected to the dead-letter topic.",
           [(rate("nudge_dead_letters_total", "source, reason"), "{{source}}: {{reason}}")], "ops", w=24),
    ]
    collector = [
        ts("Collector requests", "HTTP requests by endpoint and status.",
           [(rate("nudge_collector_requests_total", "endpoint, status"), legend("endpoint, status"))],
           "reqps"),
        ts("Collector events", "Events by type and outcome.",
           [(rate("nudge_collector_events_total", "type, outcome"), legend("type, outcome"))], "ops"),
        ts("Unsubscribe links", "Requests to /v1/unsubscribe: confirmation pages shown, unsubscribes recorded, "
           "links refused with 403 (missing, malformed, expired, forged, no_secret: a burst of forged ones is "
           "someone guessing) and 503s (broker or Redis down: the click was not recorded).",
           [(rate("nudge_unsubscribe_requests_total", "result"), "{{result}}")], "reqps", w=24, h=6),
    ]
    sink = [
        ts("Rows inserted", "Rows per second accepted by ClickHouse, by table.",
           [(rate("nudge_clickhouse_insert_rows_total", "table"), "{{table}}")], "ops", w=8),
        ts("Insert latency p95", "Batch insert duration, by table.",
           quantiles("nudge_clickhouse_insert_duration_seconds", "table", (0.95,)), "s", w=8),
        # `or ... * 0`: the error counter has no series until the first error; show 0 for every table instead.
        ts("Insert errors", "Failed insert attempts per second (the sink retries with backoff).",
           [(f'{rate("nudge_clickhouse_insert_errors_total", "table")} or '
             f'{rate("nudge_clickhouse_insert_rows_total", "table")} * 0', "{{table}}")], "ops", w=8,
           limits=thresholds((None, "green"), (0.001, "red"))),
        ts("Buffered rows", "Rows waiting in the sink's buffer (back-pressure when high).",
           [("sum by (table) (nudge_sink_buffered_rows)", "{{table}}")], "short"),
        ts("Records the sink skipped", "Records it could not store, by topic and reason.",
           [(rate("nudge_sink_skipped_records_total", "topic, reason"), "{{topic}}: {{reason}}")], "ops"),
    ]
    privacy = [
        ts("Privacy requests", "Erasure and suppression requests (docs/privacy.md): accepted by the collector, applied "
           "by the workers, completed once every store confirmed; pending = not yet confirmed (stuck: `nudge privacy "
           "status` names the store it waits for).",
           [(rate("nudge_privacy_requests_total", "store, step"), "{{store}}: {{step}}"),
            ("max(nudge_privacy_pending_requests)", "pending")], "short", w=8),
        ts("Events of suppressed leads dropped", "Dropped at the collector's edge or in the worker; never stored.",
           [(rate("nudge_privacy_dropped_events_total", "source"), "{{source}}")], "ops", w=8),
        ts("Idle leads dropped", "Lead states the workers dropped after NUDGE_LEAD_IDLE_DAYS without a write and "
           "with no pending deadline (keeps the table bounded).",
           [(f'sum(rate(nudge_worker_idle_leads_dropped_total{{job="nudge-worker"}}[{RATE}]))', "dropped")],
           "ops", w=8),
    ]
    return dashboard(
        "nudge-pipeline-health", "Nudge / Pipeline health",
        "Per process: collector, workers (lag, state, timers), dispatcher, ClickHouse sink, privacy.",
        [("Processes", processes), ("Workers", workers), ("Collector", collector), ("ClickHouse sink", sink),
         ("Privacy", privacy)],
    )


ARMS_SQL = """
SELECT experiment, variant AS arm, count() AS leads, sum(actions_sent) AS actions_sent,
       countIf(goals > 0) AS conversions, round(conversions / leads, 4) AS conversion_rate,
       round(sum(revenue) / leads, 2) AS revenue_per_lead
FROM experiment_leads WHERE $__timeFilter(assigned_at)
GROUP BY experiment, variant ORDER BY experiment, variant != 'holdout', variant
"""
RATES_SQL = """
SELECT concat(experiment, ' / ', variant) AS arm, round(countIf(goals > 0) / count(), 4) AS conversion_rate
FROM experiment_leads WHERE $__timeFilter(assigned_at)
GROUP BY experiment, variant ORDER BY experiment, variant != 'holdout', variant
"""
ASSIGNED_SQL = """
SELECT $__timeInterval(assigned_at) AS time, concat(experiment, ' / ', variant) AS arm, count() AS leads
FROM experiment_leads WHERE $__timeFilter(assigned_at)
GROUP BY time, arm ORDER BY time
"""


def experiments() -> db.Dashboard:
    """Arms and uplift from ClickHouse (the migration-5 views): the same numbers as `nudge report experiments`."""
    arms = [
        clickhouse_framed(table.Panel(), "Arms", "Per experiment and arm, people assigned in the time range: leads, "
                          "actions sent (0 for the holdout: held out), conversions (a goal event within goal_within "
                          "of the assignment), conversion rate, revenue per lead.", 24, 8, ARMS_SQL, CLICKHOUSE_TABLE),
        clickhouse_framed(barchart.Panel().x_field("arm").show_value(cm.VisibilityMode.AUTO), "Conversion rate by arm",
                          "Share of each arm's leads that reached the experiment's goal.", 12, 8, RATES_SQL,
                          CLICKHOUSE_TABLE).unit("percentunit"),
        clickhouse_framed(timeseries.Panel(), "Leads assigned by arm", "People entering each arm over time (the "
                          "holdout's share should match the configured holdout).", 12, 8, ASSIGNED_SQL,
                          CLICKHOUSE_TIME_SERIES),
    ]
    uplift = [
        clickhouse_framed(table.Panel(), "Uplift against the holdout",
                          "Every variant pooled against the holdout: conversion rates, uplift with its 95 % interval, "
                          "the always-valid p-value and verdict of the sequential test (safe to look at every day), "
                          "incremental revenue with its 95 % interval. docs/experiments.md",
                          24, 8, uplift_sql("$__timeFilter(assigned_at)"), CLICKHOUSE_TABLE),
    ]
    dash = (
        db.Dashboard("Nudge / Experiments").uid("nudge-experiments")
        .description("Do the nudges cause anything? Arms, conversions and uplift against the holdout, from ClickHouse.")
        .tags(["nudge"]).timezone("utc").refresh("5m").time("now-30d", "now").editable()
        .with_variable(db.DatasourceVariable("clickhouse").label("ClickHouse").type("grafana-clickhouse-datasource"))
        .link(
            db.DashboardLink("Nudge dashboards").type(dm.DashboardLinkType.DASHBOARDS).tags(["nudge"])
            .as_dropdown(True).include_vars(True).keep_time(True)
        )
    )
    for row_title, row_panels in (("Arms", arms), ("Uplift", uplift)):
        dash = dash.with_row(db.Row(row_title))
        for panel in row_panels:
            dash = dash.with_panel(panel)
    return dash


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "nudge-overview.json": overview,
    "nudge-rules-actions.json": rules_and_actions,
    "nudge-pipeline-health.json": pipeline_health,
    "nudge-experiments.json": experiments,
}


def _number(model: dict[str, Any]) -> dict[str, Any]:
    """Give panels ids 1..n and queries refIds A, B, ... (the builders leave them unset)."""
    for n, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = n
        for i, target in enumerate(panel.get("targets", [])):
            target["refId"] = chr(ord("A") + i)
    model["id"] = None
    model["version"] = 1
    return model


def render(build: Callable[[], db.Dashboard]) -> str:
    model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(_number(model), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build Nudge's Grafana dashboards from code.")
    parser.add_argument("--check", action="store_true", help="fail if a committed dashboard is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = HERE / name, render(build)
        if not args.check:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
    if stale:
        print(f"out of date: {', '.join(stale)}; run: .venv/bin/python dashboards/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
