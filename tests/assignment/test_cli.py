"""`nudge reps ...` and `nudge leads show` against real Redis (and a real chDB store for ClickHouse)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
import redis

from engine.cli import main
from engine.config import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROSTER = """
reps:
  - {id: alice, name: Alice, email: alice@example.com, slack_id: U1}
  - {id: bob, name: Bob, email: bob@example.com, capacity: 1}
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> dict[str, str]:
    roster = tmp_path / "reps.yaml"
    roster.write_text(ROSTER)
    values = {
        "NUDGE_REDIS_URL": redis_url,
        "NUDGE_REPS_PATH": str(roster),
        "NUDGE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_reps_list_and_set_availability(env, capsys: pytest.CaptureFixture[str]):
    assert main(["reps", "set-availability", "bob", "away"]) == 0
    assert main(["reps", "list"]) == 0
    table = capsys.readouterr().out
    assert "bob" in table and "no (away)" in table
    assert main(["reps", "list", "--json"]) == 0
    listed = {r["id"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert listed["bob"]["available"] is False and listed["alice"]["skip_reason"] is None
    assert main(["reps", "set-availability", "zed", "away"]) == 2
    assert "known reps: alice, bob" in capsys.readouterr().err
    assert main(["reps", "check"]) == 0


def test_reps_check_reports_file_and_line(env, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reps:\n  - id: a\n    name: A\n    email: nope\n")
    assert main(["reps", "--roster", str(bad), "check"]) == 2
    assert f"{bad}:4: reps.0.email" in capsys.readouterr().err


def test_leads_show_from_redis(env, redis_url: str, capsys: pytest.CaptureFixture[str]):
    client = redis.Redis.from_url(redis_url)
    client.hset("nudge:profile:ada", mapping={"email": "ada@example.org", "name": "Ada", "score": "42"})
    client.close()
    import asyncio

    import redis.asyncio as aioredis

    from engine.assignment import Assigner, load_roster

    async def assign() -> None:
        async_client = aioredis.Redis.from_url(redis_url)
        await Assigner(async_client, load_roster(env["NUDGE_REPS_PATH"])).assign("ada", {"stage": "SQL"})
        await async_client.aclose()

    asyncio.run(assign())
    assert main(["leads", "show", "ada", "--no-clickhouse"]) == 0
    out = capsys.readouterr().out
    assert "email: ada@example.org" in out
    assert "alice (by round_robin" in out and "not acknowledged" in out
    assert "score: 42" in out
    assert "stage: SQL (when assigned)" in out
    assert main(["leads", "show", "ada"]) == 0  # ClickHouse configured but no store there yet
    out = capsys.readouterr().out
    assert "no ClickHouse store at" in out and "email: ada@example.org" in out
    assert not Path(env["NUDGE_CLICKHOUSE_DSN"].removeprefix("chdb://")).exists()  # created nothing
    assert main(["leads", "show", "nobody", "--no-clickhouse"]) == 1


SEED = textwrap.dedent(
    """
    import sys
    from datetime import datetime, UTC
    from engine.clickhouse.client import connect
    from engine.clickhouse.migrations import migrate
    client = connect(sys.argv[1])
    migrate(client)
    t = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    event = {"message_id": "m1", "lead_id": "ada", "type": "track", "name": "Pricing Viewed", "timestamp": t,
             "user_id": "ada", "properties": "{}", "traits": "{}", "context": "{}", "raw": "{}",
             "kafka_partition": 0, "kafka_offset": 1}
    client.insert("events", [list(event.values())], column_names=list(event))
    updates = [("MQL", 55, t), ("SQL", 81, t.replace(minute=5))]
    client.insert(
        "lead_updates",
        [["ada", at, "stage_changed", "", f'{{"stage": "{s}", "score": {n}}}', 0, i] for i, (s, n, at)
         in enumerate(updates)],
        column_names=["lead_id", "at", "kind", "rep", "payload", "kafka_partition", "kafka_offset"],
    )
    action = {"action_id": "act_1", "step": "sent", "attempt": 1, "at": t, "rule": "hot-lead",
              "rule_version": "1", "lead_id": "ada", "connector": "slack", "rep": "alice"}
    client.insert("actions", [list(action.values())], column_names=list(action))
    client.close()
    """
)


def test_leads_show_reads_clickhouse_in_its_own_process(env, tmp_path: Path):
    environ = {**os.environ, **env}
    seed = subprocess.run(
        [sys.executable, "-c", SEED, env["NUDGE_CLICKHOUSE_DSN"]], cwd=REPO, env=environ, capture_output=True
    )
    assert seed.returncode == 0, seed.stderr.decode()
    shown = subprocess.run(
        [sys.executable, "-m", "engine", "leads", "show", "ada"], cwd=REPO, env=environ, capture_output=True
    )
    out = shown.stdout.decode()
    assert shown.returncode == 0, shown.stderr.decode() + out
    assert "stage: SQL" in out and "score: 81" in out
    assert "Pricing Viewed" in out and "hot-lead" in out
    assert "not shown" not in out, out
    command = [sys.executable, "-m", "engine", "leads", "show", "ada", "--json"]
    as_json = subprocess.run(command, cwd=REPO, env=environ, capture_output=True)
    doc = orjson.loads(as_json.stdout)
    assert (doc["stage"], doc["score"], doc["events"][0]["name"]) == ("SQL", 81, "Pricing Viewed")
    assert Settings.from_env(environ).clickhouse_dsn == env["NUDGE_CLICKHOUSE_DSN"]


def test_unreachable_redis_is_reported_not_raised(env, monkeypatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("NUDGE_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert main(["reps", "list"]) == 1
    assert "unreachable" in capsys.readouterr().err
    assert main(["leads", "show", "ada", "--no-clickhouse"]) == 1
    assert "(not shown: redis: redis://127.0.0.1:1/0" in capsys.readouterr().out


def test_reps_link_prints_a_working_sign_in_url(env, monkeypatch, capsys: pytest.CaptureFixture[str]):
    import time
    from urllib.parse import parse_qsl, urlsplit

    from engine.assignment.links import RepLinks

    assert main(["reps", "link", "alice"]) == 2  # kafka profile, no secret: refused
    assert "NUDGE_REPS_LINK_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("NUDGE_REPS_LINK_SECRET", "z" * 40)
    monkeypatch.setenv("NUDGE_REPS_PUBLIC_URL", "https://reps.example.com")
    assert main(["reps", "link", "alice", "--expires", "2h"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://reps.example.com/inbox/signin?rep=alice&exp=")
    link = RepLinks.from_settings(Settings.from_env()).verify(dict(parse_qsl(urlsplit(url).query)), "signin")
    assert link.rep_id == "alice" and 7190 < link.expires_s - time.time() <= 7200
    assert main(["reps", "link", "zed"]) == 2 and "known reps: alice, bob" in capsys.readouterr().err
    assert main(["reps", "link", "alice", "--expires", "soon"]) == 2


def test_reps_queue_release_and_reassign(env, settings: Settings, monkeypatch, capsys: pytest.CaptureFixture[str]):
    import asyncio

    import redis.asyncio as aioredis

    from engine.assignment import Assigner, load_roster
    from engine.clickhouse.sink import ensure_topics
    from engine.kafka import topics
    from engine.testing import TopicReader

    monkeypatch.setenv("NUDGE_BROKER_URL", settings.broker_url)
    monkeypatch.setenv("NUDGE_TOPIC_PREFIX", settings.topic_prefix)
    asyncio.run(ensure_topics(settings, (topics.ACTIONS,)))

    async def setup() -> None:
        client = aioredis.Redis.from_url(env["NUDGE_REDIS_URL"])
        assigner = Assigner(client, load_roster(env["NUDGE_REPS_PATH"]))
        await assigner.set_availability("alice", False)
        assert (await assigner.assign_or_queue("b1", {})).rep_id == "bob"  # bob's capacity is 1
        assert (await assigner.assign_or_queue("q1", {"score": 10})).position == 1
        assert (await assigner.assign_or_queue("q2", {"score": 90})).position == 1  # hotter: first
        await client.aclose()

    asyncio.run(setup())
    assert main(["reps", "queue", "--json"]) == 0
    assert [row["lead_id"] for row in orjson.loads(capsys.readouterr().out)] == ["q2", "q1"]
    assert main(["reps", "queue"]) == 0 and "q2" in capsys.readouterr().out
    assert main(["reps", "reassign", "q2", "alice"]) == 1  # alice is away
    assert "use --force" in capsys.readouterr().err
    assert main(["reps", "reassign", "q2", "alice", "--force"]) == 0
    assert "now owned by alice" in capsys.readouterr().out
    assert main(["reps", "release", "b1"]) == 0 and "released (was bob)" in capsys.readouterr().out
    assert main(["reps", "release", "q1"]) == 0 and "taken out of the queue" in capsys.readouterr().out
    assert main(["reps", "release", "nobody"]) == 1

    async def notes() -> list[tuple[str, str, str]]:
        async with TopicReader.from_settings(settings, topics.ACTIONS) as reader:
            await reader.wait_for(lambda: len(reader.records) >= 2, 20, "the reassignment's notifications")
        from engine.core.model import Action

        actions = [Action.from_json(record.value) for record in reader.records]
        return sorted((a.lead_id, a.connector, a.template) for a in actions)

    assert asyncio.run(notes()) == [("q2", "email", "lead_assigned"), ("q2", "slack", "lead_assigned")]
    client = redis.Redis.from_url(env["NUDGE_REDIS_URL"])
    history = [orjson.loads(h) for h in client.lrange("nudge:{assign}:history:b1", 0, -1)]
    client.close()
    assert [(h["event"], h["by"]) for h in history] == [("assigned", "dispatcher"), ("released", "cli")]
