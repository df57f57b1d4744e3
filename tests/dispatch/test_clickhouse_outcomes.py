"""Every delivery outcome reaches ClickHouse with its action id (through the real sink); no secret does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from engine.clickhouse.client import connect
from engine.clickhouse.sink import Sink
from engine.config import Settings
from engine.testing import Answer, PeerRequest, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig, converted

pytestmark = pytest.mark.integration

SECRET = "tok-Sup3rSecret-ch-0001"


def unavailable_echoing_auth(request: web.Request, _: PeerRequest) -> Answer:
    return 503, {}, f"unavailable for {request.headers.get('Authorization')}"


async def test_outcomes_are_stored_with_action_ids_and_without_secrets(settings: Settings, rig: DispatchRig) -> None:
    ok = await rig.peer(script=[(500, {}, "once")])
    dead = await rig.peer(respond=unavailable_echoing_auth)
    now = datetime.now(UTC)
    start, end = f"{now - timedelta(hours=1):%H:%M}", f"{now + timedelta(hours=1):%H:%M}"
    dispatcher = rig.dispatcher(
        f"""
connectors:
  ok: {{type: webhook, url: "{ok.url}/in"}}
  crm:
    type: crm
    base_url: "{dead.url}/crm"
    token: "${{CRM_TOKEN}}"
    retry: {{max_attempts: 2, base_delay_s: 0}}
  night: {{type: webhook, url: "{ok.url}/night"}}
policies:
  consent: {{connectors: [ok]}}
  quiet_hours: {{start: {start}, end: {end}, connectors: [night]}}  # unquoted on purpose: YAML 1.1 times
""",
        env={"CRM_TOKEN": SECRET},
    )
    flaky = make_action("ok")
    doomed = make_action("crm", marketing=False)
    unsubscribed = make_action("ok", context={"traits": {"email": "u@example.com", "unsubscribed": True}})
    deferred = make_action("night", context={"traits": {"timezone": "UTC"}})
    expired = make_action("ok", expires_at_ms=int(now.timestamp() * 1000) - 1000)
    bought = make_action("ok")
    expected = {
        flaky.action_id: {"retried", "sent"},
        doomed.action_id: {"retried", "failed"},
        unsubscribed.action_id: {"suppressed"},
        deferred.action_id: {"deferred"},
        expired.action_id: {"suppressed"},
        bought.action_id: {"suppressed"},
    }
    stop = asyncio.Event()
    sink = Sink(settings, max_wait_s=0.2)
    sink_task = asyncio.create_task(sink.run(stop))
    try:
        await dispatcher.start()
        await rig.produce_updates([converted(bought)])  # the lead bought: the worker's hand-over record
        for _ in range(100):
            if (await dispatcher.recheck.situation(bought.lead_id, bought.rule)).converted_at_ms:
                break
            await asyncio.sleep(0.05)
        await rig.produce([flaky, doomed, unsubscribed, deferred, expired, bought])
        await wait_until(lambda: len(rig.deliveries.records) == 8 and rig.dead_letters.records, what="all outcomes")
        await wait_until(lambda: sink.rows_written >= 6 + 8 + 1 + 1, timeout_s=30, what="the sink to store them")
    finally:
        stop.set()
        await asyncio.wait_for(sink_task, 30)
    client = connect(settings.clickhouse_dsn)
    try:  # chDB allows one path per process: close before the next test opens its own
        rows = client.query(
            "SELECT action_id, step, reason FROM actions FINAL WHERE step != 'fired'"
        ).result_rows
        steps: dict[str, set[str]] = {}
        for action_id, step, _reason in rows:
            steps.setdefault(action_id, set()).add(step)
        assert steps == expected
        reasons = {(a, s): r for a, s, r in rows}
        assert reasons[(unsubscribed.action_id, "suppressed")] == "unsubscribed"
        assert reasons[(deferred.action_id, "deferred")] == "quiet_hours"
        assert reasons[(doomed.action_id, "failed")] == "retries_exhausted"
        assert reasons[(expired.action_id, "suppressed")] == "expired"
        assert reasons[(bought.action_id, "suppressed")] == "converted"
        letters = client.query("SELECT reason, detail, payload FROM dead_letters FINAL").result_rows
        assert [r[0] for r in letters] == ["retries_exhausted"] and "***" in letters[0][1]
        everything = repr(client.query("SELECT * FROM actions FINAL").result_rows) + repr(letters)
        assert SECRET not in everything
    finally:
        client.close()
