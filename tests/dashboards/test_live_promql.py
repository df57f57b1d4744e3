"""THE acceptance test of the dashboards and alerts: every PromQL expression they contain, evaluated by a real
Prometheus scraping the real Nudge processes while events flow, parses and returns data.

Set-up (all real, on loopback): the dev stack (Tansu + Redis), `nudge collector`, `nudge worker`,
`nudge dispatch` and `nudge sink` as subprocesses, a webhook peer and a Slack-format peer
(`engine.testing.RecordingPeer`s in a thread), and Debian's `prometheus` configured from
deploy/prometheus.yml (same jobs, same alert rules) scraping them every second. Traffic: Segment batches
through the collector (abandoned carts → deadline timers fire, repeated pricing views → threshold fires, bad
requests → collector 4xx), garbage straight onto the clickstream topic (→ dead letters), and a peer that fails
first (→ retries).

Checks:
- every dashboard panel query and variable query, and every alert's signal, returns at least one sample that
  is not NaN (rates are over `queries.RATE_WINDOW`: histograms must have had observations during the test);
- every alert expression parses, and every alert rule evaluates without error in Prometheus;
- every metric name any query selects is declared by a live process's /metrics (or is Prometheus's `up`).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Settings
from engine.devstack import StackInfo, free_port
from engine.events import format_ts
from engine.testing import RecordingPeer

from .processes import NudgeProcess, declared_metrics
from .prometheus import Prometheus, QueryError
from .queries import Query, alert_queries, alert_rules, dashboard_queries, metric_names

pytestmark = pytest.mark.integration

WRITE_KEY = "live-test-key"
# Metrics whose code exists but that no running process drives yet, with the reason. Queries over them only
# have to parse. The test fails as soon as one of them carries data, so this list cannot go stale.
NOT_YET_DRIVEN: dict[str, str] = {}  # metric → why no live process can drive it yet
RULES = """
rules:
  - id: live_cart_abandoned
    kind: absence
    when: {event: "Product Added"}
    unless: {event: "Order Completed"}
    within: 2s
    action: {connector: webhook}
  - id: live_pricing_interest
    kind: threshold
    match: {event: "Pricing Viewed"}
    within: 1h
    count: 2
    action: {connector: slack, payload: {assign: true}}   # a hot lead: the dispatcher assigns a rep (issue 8)
  - id: live_journey
    kind: journey
    entry: {event: "Product Added"}
    steps:
      - {id: pause, wait: 1s}
      - {id: note, send: {connector: log}}
"""


def connectors_yaml(webhook: RecordingPeer, slack: RecordingPeer) -> str:
    return f"""
connectors:
  webhook: {{type: webhook, url: "{webhook.url}/hook"}}
  slack: {{type: slack, webhook_url: "{slack.url}/hook"}}
  log: {{type: log}}
"""


def has_command(name: str) -> bool:
    return importlib.util.find_spec(f"engine.commands.{name}") is not None


def write_roster(tmp: Path) -> Path:
    """One rep who is always on duty: the dispatcher's assignments do not depend on the time of day. A 1 s
    acknowledgement SLA lets `nudge reps serve` breach it during the test (nobody acks)."""
    path = tmp / "reps.yaml"
    path.write_text(
        "sla: {ack_within: 1s}\n"
        "reps:\n  - {id: val, name: Val Live, email: val@example.com, slack_id: U0VAL}\n"
    )
    return path


def process_env(settings: Settings, stack: StackInfo, tmp: Path) -> dict[str, str]:
    return {
        **stack.env(),
        "NUDGE_BROKER_PROFILE": "dev",
        "NUDGE_CLICKHOUSE_DSN": settings.clickhouse_dsn,
        "NUDGE_STATE_DIR": str(tmp / "state"),
        "NUDGE_TOPIC_PREFIX": settings.topic_prefix,
        "NUDGE_APP_ID": settings.app_id,
        "NUDGE_PARTITIONS": str(settings.partitions),
        "NUDGE_RULES_PATH": str(tmp / "rules"),
        "NUDGE_CONNECTORS_PATH": str(tmp / "connectors.yaml"),
        "NUDGE_REPS_PATH": str(write_roster(tmp)),
        "NUDGE_WRITE_KEYS": WRITE_KEY,
        "NUDGE_LOG_LEVEL": "info",
        "NUDGE_ALLOWED_LATENESS_S": "0.5",
        "NUDGE_TIMER_INTERVAL_S": "0.1",
    }


@pytest.fixture
def peers() -> Iterator[dict[str, RecordingPeer]]:
    """The webhook peer fails its first 3 requests (→ retries); the Slack-format peer accepts everything."""
    failing_first = RecordingPeer(script=[(500, {}, "fail")] * 3)
    with failing_first.serve_in_thread() as webhook, RecordingPeer().serve_in_thread() as slack:
        yield {"webhook": webhook, "slack": slack}


@pytest.fixture
def engine(
    settings: Settings, stack: StackInfo, tmp_path: Path, peers: dict[str, RecordingPeer]
) -> Iterator[dict[str, NudgeProcess]]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "rules" / "live.yaml").write_text(RULES)
    (tmp_path / "connectors.yaml").write_text(connectors_yaml(peers["webhook"], peers["slack"]))
    env = process_env(settings, stack, tmp_path)
    plan = {  # job → command line and the option that sets its /metrics port
        "nudge-collector": (["collector"], "--port"),
        "nudge-worker": (["worker"], "--web-port"),
        "nudge-dispatcher": (["dispatch"], "--metrics-port"),
        "nudge-sink": (["sink"], "--metrics-port"),
        "nudge-reps": (["reps", "serve", "--interval", "0.5"], "--port"),
    }
    procs = {}
    for job, (command, port_option) in plan.items():
        if has_command(command[0]):
            port = free_port()
            args = [*command, port_option, str(port)]
            procs[job] = NudgeProcess(job, args, env, port, tmp_path / f"{job}.log")
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            proc.wait_metrics()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def post_batch(collector: NudgeProcess, events: list[dict]) -> int:
    body = json.dumps({"batch": events, "sentAt": format_ts(int(time.time() * 1000))}).encode()
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    port = collector.args[collector.args.index("--port") + 1]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/batch", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def track(lead: str, name: str) -> dict:
    return {"type": "track", "event": name, "userId": lead, "messageId": uuid.uuid4().hex,
            "timestamp": format_ts(int(time.time() * 1000)), "properties": {"value": 10}}


def send_traffic(procs: dict[str, NudgeProcess], settings: Settings, stack: StackInfo, wave: int) -> None:
    """One wave: 5 abandoned carts, 3 hot pricing leads, a bad request, and garbage on the clickstream."""
    collector = procs["nudge-collector"]
    events = [track(f"w{wave}-cart-{i}", "Product Added") for i in range(5)]
    for i in range(3):
        events += [track(f"w{wave}-price-{i}", "Pricing Viewed") for _ in range(2)]
    events.append({"type": "page", "name": "Home", "anonymousId": f"w{wave}-anon",
                   "messageId": uuid.uuid4().hex, "timestamp": format_ts(int(time.time() * 1000))})
    assert post_batch(collector, events) == 200, collector.log_tail()
    # Rejected with 400: no userId or anonymousId.
    assert post_batch(collector, [{"type": "track", "event": "No ids"}]) == 400

    import asyncio

    from aiokafka import AIOKafkaProducer  # the worker must dead-letter what the collector would have refused

    async def garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            topic = settings.topic("clickstream")
            await producer.send_and_wait(topic, key=b"junk", value=b"{not json")
            await producer.send_and_wait(topic, key=b"junk", value=b'{"type": "track", "userId": "x"}')
        finally:
            await producer.stop()

    asyncio.run(garbage())


def evaluate(prometheus: Prometheus, queries: list[Query]) -> dict[str, str]:
    """Problems by query location: empty result, only NaN, or rejected by Prometheus."""
    problems = {}
    for query in queries:
        try:
            result = prometheus.query(query.expr)["result"]
        except QueryError as exc:
            problems[query.where] = f"rejected: {exc}  [{query.expr}]"
            continue
        if not query.must_return_data or metric_names(query.expr) & NOT_YET_DRIVEN.keys():
            continue
        values = [float(r["value"][1]) for r in result]
        if not values:
            problems[query.where] = f"no data  [{query.expr}]"
        elif all(math.isnan(v) for v in values):
            problems[query.where] = f"only NaN (no observations in the window)  [{query.expr}]"
    return problems


def test_every_dashboard_and_alert_query_returns_data_from_the_live_engine(
    engine: dict[str, NudgeProcess], peers: dict[str, RecordingPeer], settings: Settings, stack: StackInfo,
    tmp_path: Path,
) -> None:
    missing = {"nudge-collector", "nudge-worker", "nudge-dispatcher", "nudge-sink", "nudge-reps"} - engine.keys()
    assert not missing, f"processes not available yet: {sorted(missing)}"
    queries = list(dashboard_queries()) + list(alert_queries())
    targets = {job: [proc.target] for job, proc in engine.items()}
    with Prometheus(tmp_path / "prometheus", targets) as prometheus:
        # Traffic keeps flowing while we poll: rates and quantiles over RATE_WINDOW need fresh observations.
        deadline = time.monotonic() + 60
        wave = 0
        problems: dict[str, str] = {"(not evaluated yet)": ""}
        while problems and time.monotonic() < deadline:
            send_traffic(engine, settings, stack, wave)
            wave += 1
            time.sleep(2)
            problems = evaluate(prometheus, queries)
        report = "\n".join(f"  {where}: {why}" for where, why in sorted(problems.items()))
        logs = "\n".join(f"--- {job} ---\n{proc.log_tail(1500)}" for job, proc in engine.items())
        assert not problems, f"{len(problems)} of {len(queries)} queries fail:\n{report}\n{logs}"
        # The traffic went all the way: both peers got deliveries, and the webhook's failures were retried.
        assert 200 in peers["webhook"].statuses and 200 in peers["slack"].statuses, logs
        assert peers["webhook"].statuses.count(500) == 3, "the webhook peer never failed: no retries were exercised"

        for name, why in NOT_YET_DRIVEN.items():
            count = prometheus.series_count(name)
            assert count == 0, f"{name} has data now: remove it from NOT_YET_DRIVEN ({why})"

        # End to end: the garbage we sent (1 in 7 messages) trips the dead-letter alert; `for: 10m` keeps it
        # pending, which shows the rule sees the engine's real series.
        active = {a["labels"]["alertname"]: a["state"] for a in prometheus.api("alerts")["alerts"]}
        assert active.get("NudgeDeadLetterRateHigh") in ("pending", "firing"), active

        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        assert not unhealthy, f"alert rules failing in Prometheus: {unhealthy}"

    declared = {"up"}.union(*(declared_metrics(proc.metrics()) for proc in engine.values()))
    for query in queries:
        unknown = metric_names(query.expr) - declared
        assert not unknown, f"{query.where}: {sorted(unknown)} not exported by any live Nudge process"
