"""Issue 17's acceptance on the real stack: export, then erase, a lead that left traces everywhere.

All real, on loopback: the dev stack's broker and Redis, `nudge worker`, `nudge dispatch` and `nudge sink`
subprocesses (chDB), the collector in this process (its own thread; it hosts the privacy coordinator), an SMTP
server and an HTTP peer. The lead was anonymous (a cart), then identified by the shop's back end with an email;
its cart reminder was delivered by email, its demo request got an owner rep and a webhook held by quiet hours, and
two of its records were dead-lettered. Another lead is the control.

The export (with the sink stopped: chDB has one owner) holds all of that. Then: erasure with a write key is 401;
with the admin token it is accepted and `nudge privacy status --wait` sees every store confirm; afterwards a dump of
every Redis key and value and every ClickHouse row holds neither the user id, the anonymous id nor the email, the
control is untouched, a later event of the erased (suppressed) lead fires nothing, a restarted worker does not
resurrect it, and an unknown lead's erasure completes with zero counts.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import requests

from engine.collector.app import create_app
from engine.config import Settings
from engine.events import format_ts
from engine.kafka import topics
from engine.kafka.admin import ensure_topics
from engine.testing import ChildProcess, RecordingPeer, TopicReader, nudge_command, wait_until
from tests.collector.conftest import SERVER_KEY, WRITE_KEY, ServerThread
from tests.connectors.smtp_peer import SmtpPeer
from tests.integration.rig import email_connector_yaml
from tests.integration.worker_process import WORKER_TOPICS, WorkerProcess, send, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_TOKEN = "admin-token-for-the-privacy-test-0123456789"
USER, ANON, EMAIL = "user-quinn-7f3a", "anon-quinn-91c2", "quinn.privacy@example.com"
OTHER, OTHER_EMAIL = "user-otto-5b2e", "otto.control@example.com"
SECRETS = (USER, ANON, EMAIL)
RULES = """
rules:
  - id: cart_abandoned
    kind: absence
    when: {event: Product Added}
    unless: {event: Order Completed}
    within: 3s
    action: {connector: email, template: cart_reminder}
  - id: demo_requested
    kind: threshold
    match: {event: Demo Requested}
    count: 1
    within: 1h
    marketing: false
    action: {connector: webhook, payload: {assign: true}}
  - id: product_interest
    kind: threshold
    match: {event: Product Added}
    count: 1
    within: 1h
    action: {connector: webhook}
"""
ROSTER = """
strategy: round_robin
sla: {ack_within: 15m}
reps:
  - {id: rita, name: Rita Rep, email: rita@sales.example, capacity: 5}
"""


def connectors_yaml(smtp_port: int, webhook_url: str, collector_url: str) -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return f"""
defaults:
  timeout_s: 2
  retry: {{max_attempts: 3, base_delay_s: 0.05, max_delay_s: 0.2}}
connectors:
{email_connector_yaml(smtp_port, collector_url)}  webhook: {{type: webhook, url: "{webhook_url}/hook", timeout_s: 2}}
policies:
  quiet_hours: {{start: "{start:%H:%M:%S}", end: "{end:%H:%M:%S}", connectors: [webhook]}}
  default_timezone: UTC
dispatcher: {{schedule_poll_s: 0.05, commit_interval_s: 0.2, session_timeout_ms: 6000}}
"""


@dataclass
class Stack:
    settings: Settings
    tmp: Path
    worker: WorkerProcess
    collector: ServerThread
    smtp: SmtpPeer
    reader: TopicReader

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.env()}

    def child(self, name: str, args: list[str]) -> ChildProcess:
        return ChildProcess.nudge(f"nudge {name}", args, self.env(), self.tmp / f"{name}.log")

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        return await asyncio.to_thread(requests.post, self.collector.url + path, json=body, headers=headers, timeout=20)

    async def track(self, path: str, body: dict[str, Any]) -> None:
        auth = {"Authorization": "Basic " + base64.b64encode(f"{SERVER_KEY}:".encode()).decode()}
        answer = await self.post(path, body, auth)
        assert answer.status_code == 200, answer.text

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*nudge_command(), "privacy", *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def actions(self, lead: str) -> list[dict[str, Any]]:
        return [d for d in (r.json() for r in self.reader.of(topics.ACTIONS)) if d["lead_id"] == lead]

    def deliveries(self, lead: str) -> list[dict[str, Any]]:
        return [d for d in (r.json() for r in self.reader.of(topics.DELIVERIES)) if d["lead_id"] == lead]


@pytest.fixture
async def stack(
    settings: Settings, tmp_path: Path, smtp_inbox: SmtpPeer, http_peer: RecordingPeer
) -> AsyncIterator[Stack]:
    (tmp_path / "reps.yaml").write_text(ROSTER)
    connectors = tmp_path / "connectors.yaml"
    stack_settings = with_rules(
        settings,
        tmp_path,
        RULES,
        connectors_path=connectors,
        reps_path=tmp_path / "reps.yaml",
        write_keys=(WRITE_KEY,),
        server_write_keys=(SERVER_KEY,),
        admin_token=ADMIN_TOKEN,
        unsubscribe_secret="privacy-test-unsubscribe-secret-0123456789",
        default_timezone="UTC",
        rate_limit_key_events_per_s=0.0,
        rate_limit_ip_events_per_s=0.0,
    )
    connectors.write_text(connectors_yaml(smtp_inbox.port, http_peer.url, "http://127.0.0.1:9"))
    all_topics = (*WORKER_TOPICS, "deliveries", "lead-updates", topics.PRIVACY_REQUESTS, topics.PRIVACY)
    await ensure_topics(stack_settings, all_topics)
    worker = WorkerProcess(stack_settings, tmp_path / "worker.log")
    collector = ServerThread(lambda: create_app(stack_settings)).start()
    reader = TopicReader.from_settings(stack_settings, topics.ACTIONS, topics.DELIVERIES)
    try:
        await worker.start_ready()
        await reader.start()
        yield Stack(stack_settings, tmp_path, worker, collector, smtp_inbox, reader)
    finally:
        await reader.stop()
        collector.stop()
        worker.stop()


async def leave_traces(stack: Stack) -> None:
    """The lead's journey, and the control's."""
    await stack.track("/v1/track", {"anonymousId": ANON, "event": "Product Added", "messageId": f"add-{ANON}",
                                    "properties": {"product_id": "p1", "price": 30}})  # fmt: skip
    await stack.track("/v1/identify", {"userId": USER, "anonymousId": ANON, "messageId": f"id-{USER}",
                                       "traits": {"email": EMAIL, "name": "Quinn P", "consent": True}})  # fmt: skip
    await stack.track("/v1/track", {"userId": USER, "event": "Demo Requested", "messageId": f"demo-{USER}"})
    await stack.track("/v1/identify", {"userId": OTHER, "messageId": f"id-{OTHER}",
                                       "traits": {"email": OTHER_EMAIL, "name": "Otto Control"}})  # fmt: skip
    await stack.track("/v1/track", {"userId": OTHER, "event": "Product Added", "messageId": f"add-{OTHER}",
                                    "properties": {"product_id": "p2", "price": 12}})  # fmt: skip
    # Two records the worker rejects, produced straight to Kafka: a bad timestamp naming the user and the email,
    # and a record keyed by the anonymous id whose event names another lead.
    bad_time = {"type": "track", "event": "Viewed", "userId": USER, "timestamp": "yesterday", "messageId": "dl-1",
                "properties": {"email": EMAIL}}  # fmt: skip
    wrong_key = {"type": "track", "event": "Viewed", "userId": "someone-else", "messageId": "dl-2",
                 "timestamp": format_ts(int(time.time() * 1000))}  # fmt: skip
    await send(stack.settings, [(USER.encode(), orjson.dumps(bad_time)), (ANON.encode(), orjson.dumps(wrong_key))])


async def redis_dump(url: str) -> str:
    """Every key and value of the Redis database, as text."""
    client = aioredis.Redis.from_url(url)
    parts: list[str] = []
    try:
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            if kind == "string":
                value: Any = await client.get(key)
            elif kind == "hash":
                value = await client.hgetall(key)
            elif kind == "list":
                value = await client.lrange(key, 0, -1)
            elif kind == "set":
                value = await client.smembers(key)
            elif kind == "zset":
                value = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = await client.xrange(key)
            else:
                value = kind
            parts.append(f"{key!r} {value!r}")
    finally:
        await client.aclose()
    return "\n".join(parts)


def clickhouse_dump(dsn: str) -> dict[str, str]:
    """Every row of every table of the store, as text per table (the sink must be stopped)."""
    from engine.clickhouse.client import connect

    client = connect(dsn)
    try:
        tables = [
            r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
        ]
        return {t: repr(client.query(f"SELECT * FROM {t}").result_rows) for t in tables}
    finally:
        client.close()


async def test_export_then_erase_a_lead_from_every_store(stack: Stack) -> None:
    sink = stack.child("sink", ["sink", "--max-wait", "0.2"])
    dispatcher = stack.child("dispatch", ["dispatch", "--metrics-port", "0"])
    with dispatcher, sink:
        dispatcher.start()
        await dispatcher.wait_for_log("caught up with lead-updates", timeout_s=40)
        sink.start()
        await leave_traces(stack)
        # Wait for the two reminders by address: the rep's hot-lead mail can arrive first, and a count of two
        # then left the lead's own reminder still on its way (seen once in a full run).
        await wait_until(
            lambda: {EMAIL, OTHER_EMAIL} <= {m["To"].addresses[0].addr_spec for m in stack.smtp.messages},
            timeout_s=40,
            what="the two cart reminders",
            detail=lambda: f"mails to {[m['To'] for m in stack.smtp.messages]}, deliveries {stack.reader.docs()}",
        )
        await wait_until(
            lambda: any(d["outcome"] == "deferred" for d in stack.deliveries(ANON)),
            timeout_s=30,
            what="the anonymous visitor's webhook held by quiet hours",
        )
        reminders = [m for m in stack.smtp.messages if m["To"].addresses[0].addr_spec == EMAIL]
        assert reminders, "the cart reminder went to the identified email"
        await asyncio.sleep(3)  # the sink writes its last batches

        # Export: the running sink owns chDB, so the command says to stop it and exits 1 ...
        running = stack.cli("export", USER)
        assert running.returncode == 1 and "nudge sink" in running.stderr, running.stderr
        sink.stop()
        # ... and with the sink stopped it holds everything.
        done = stack.cli("export", USER)
        assert done.returncode == 0, done.stderr
        doc = orjson.loads(done.stdout)
        assert set(doc["ids"]) >= {USER, ANON}
        assert doc["profiles"][USER]["email"] == EMAIL
        assert {(e["lead_id"], e["name"]) for e in doc["events"]} >= {(ANON, "Product Added"), (USER, "Demo Requested")}
        outcomes = {a["rule"]: a["outcome"] for a in doc["actions"]}
        assert outcomes["cart_abandoned"] == "sent" and outcomes["demo_requested"] == "sent", outcomes
        assert outcomes["product_interest"] == "deferred", outcomes  # a marketing webhook held by quiet hours
        rules = ("cart_abandoned", "demo_requested", "product_interest")
        assert all(a.get("explanation") for a in doc["actions"] if a["rule"] in rules)
        assert doc["assignment"][USER]["owner"]["rep"] == "rita" and doc["assignment"][USER]["history"]
        assert doc["consent_history"] and doc["consent_history"][0]["traits"] == {"consent": True}
        assert {d["reason"] for d in doc["dead_letters"]} >= {"bad_timestamp", "wrong_key"}
        assert doc["state"] is not None and "pending_deadlines_ms" in doc["state"]

        sink.start()
        # Erasure: a write key is not the admin token.
        basic = {"Authorization": "Basic " + base64.b64encode(f"{SERVER_KEY}:".encode()).decode()}
        body = {"regulationType": "Suppress_With_Delete", "subjectType": "USER_ID", "subjectIds": [USER]}
        assert (await stack.post("/v1/regulations", body, basic)).status_code == 401
        assert (await stack.post("/v1/regulations", body, {"Authorization": f"Bearer {SERVER_KEY}"})).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        answer = await stack.post("/v1/regulations", body, admin)
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["data"]["regulateId"]
        unknown = stack.cli("erase", "nobody-ever-seen")
        assert unknown.returncode == 0, unknown.stderr
        unknown_id = unknown.stdout.strip().splitlines()[-1]

        started = time.monotonic()
        status = stack.cli("status", request_id, "--wait", "60", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        took = time.monotonic() - started
        report = orjson.loads(status.stdout)
        counts = report["counts"]
        assert counts["worker"]["lead_states"] >= 1 and counts["worker"]["suppressed"] == 2
        assert counts["redis"]["profile"] >= 1 and counts["redis"]["assignment"] == 1
        assert counts["redis"]["schedule"] >= 1 and counts["redis"]["idempotency"] >= 1
        assert counts["clickhouse"]["events"] >= 3 and counts["clickhouse"]["actions"] >= 2
        assert counts["clickhouse"]["dead_letters"] >= 2
        print(f"erasure confirmed by every store {took:.1f} s after the request: {counts}")
        unknown_status = stack.cli("status", unknown_id, "--wait", "60", "--json")
        assert unknown_status.returncode == 0, unknown_status.stdout + unknown_status.stderr
        zero = orjson.loads(unknown_status.stdout)["counts"]
        assert zero["worker"]["lead_states"] == 0 and sum(zero["clickhouse"].values()) == 0

        # A later event of the erased lead: the collector answers 200 and keeps nothing; nothing fires. (A record
        # produced to Kafka directly is dropped by the worker: tests/privacy/test_worker_privacy.py.)
        fired_before = len(stack.actions(USER) + stack.actions(ANON))
        await stack.track("/v1/track", {"userId": USER, "event": "Product Added", "messageId": "after-1"})
        await stack.track("/v1/track", {"anonymousId": ANON, "event": "Product Added", "messageId": "after-2"})
        await asyncio.sleep(5)
        assert len(stack.actions(USER) + stack.actions(ANON)) == fired_before
        # A restarted worker does not resurrect it.
        stack.worker.stop()
        await stack.worker.start_ready()
        await asyncio.sleep(4.5)
        assert len(stack.actions(USER) + stack.actions(ANON)) == fired_before
        await asyncio.sleep(2)  # the sink writes what the restart produced (nothing of the lead)
        sink.stop()
        dispatcher.stop()

    dump = await redis_dump(stack.settings.redis_url)
    for secret in SECRETS:
        assert secret not in dump, f"{secret} is still in Redis"
    assert OTHER in dump and OTHER_EMAIL in dump  # the control is untouched
    tables = clickhouse_dump(stack.settings.clickhouse_dsn)
    for table, rows in tables.items():
        for secret in SECRETS:
            assert secret not in rows, f"{secret} is still in ClickHouse table {table}"
    assert OTHER in tables["events"] and OTHER in tables["actions"]
    assert request_id in tables["privacy_receipts"]
    # No personal data in the processes' logs (info level, as they run in production): no email, no name.
    logs = {path.name: path.read_text(errors="replace") for path in stack.tmp.glob("*.log")}
    assert {"worker.log", "dispatch.log", "sink.log"} <= set(logs), sorted(logs)
    for name, text in logs.items():
        for personal in (EMAIL, OTHER_EMAIL, "Quinn P", "Otto Control"):
            assert personal not in text, f"{personal} is in {name}"
