"""`nudge privacy export`: one JSON document with everything Nudge holds about a lead (GDPR Art. 15), over every id
merged into it.

Sources: Redis (profile and traits of each id, assignment owner and history, suppression), ClickHouse (events,
actions with their steps and explanations, lead updates, dead letters) and the lead's current state, rebuilt by the
worker's own pure core from the stored events (`engine.core.evaluate`, the same way `nudge replay` does): score
and its contributions, stage, facts, pending deadlines. An embedded chDB store can be read only while `nudge sink`
is stopped (chDB allows one process per store); the document then says so under `unavailable`, and the command
exits 1 so a partial export is never mistaken for a whole one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from engine.assignment.store import AssignmentStore
from engine.collector.identity import read_profile
from engine.config import Settings, redact_url
from engine.privacy.identities import all_ids, emails_of
from engine.privacy.requests import hash_key, suppressed_key

CONSENT_TRAITS = ("consent", "marketing_consent", "marketingconsent", "unsubscribed")
CONSENT_EVENTS = ("Unsubscribed", "Subscribed", "Consent Given", "Consent Withdrawn")


async def from_redis(settings: Settings, redis: Redis, lead_id: str, doc: dict[str, Any]) -> list[str]:
    """Fill the Redis part of `doc`; returns every id of the lead known to Redis, and its email addresses under
    `doc["emails"]`."""
    ids = await all_ids(redis, lead_id)
    doc["profiles"] = {i: read_profile(await redis.hgetall(f"nudge:profile:{i}")) for i in ids}
    doc["profiles"] = {i: p for i, p in doc["profiles"].items() if p}
    store = AssignmentStore(redis)
    assignment: dict[str, Any] = {}
    for i in ids:
        owner = await store.owner(i)
        history = await store.history(i)
        if owner or history:
            if "lead" in owner:
                with contextlib.suppress(orjson.JSONDecodeError):
                    owner["lead"] = orjson.loads(owner["lead"])
            assignment[i] = {"owner": owner or None, "history": history}
    doc["assignment"] = assignment
    key = hash_key(settings)
    doc["suppressed"] = any([await redis.exists(suppressed_key(key, i)) for i in ids])
    doc["emails"] = await emails_of(redis, ids)
    return ids


def from_clickhouse(settings: Settings, ids: list[str], doc: dict[str, Any]) -> list[str]:
    """Fill the ClickHouse part of `doc` (expanding `ids` through stored merges); returns every id covered."""
    from engine.clickhouse import merged_history
    from engine.clickhouse.client import connect

    dsn = settings.clickhouse_dsn
    if dsn.startswith("chdb:///") and not Path(dsn.removeprefix("chdb://")).exists():
        doc["unavailable"]["clickhouse"] = f"no ClickHouse store at {dsn} (set NUDGE_CLICKHOUSE_DSN)"
        return ids
    try:
        client = connect(dsn)
    except Exception as exc:  # the running sink holds chDB, or the server is down
        text = str(exc).splitlines()[0][:300]
        if dsn.startswith("chdb:"):
            text = (
                "the embedded ClickHouse store cannot be opened: a running `nudge sink` owns it (chDB allows one "
                "process per store). Stop the sink for the export (it resumes where it stopped), or point "
                f"NUDGE_CLICKHOUSE_DSN at a ClickHouse server ({text})"
            )
        doc["unavailable"]["clickhouse"] = text
        return ids
    try:
        from engine.clickhouse.erasure import expand_ids

        covered = expand_ids(client, ids)
        doc["events"] = merged_history.events(client, covered)
        doc["actions"] = merged_history.actions(client, covered)
        doc["lead_updates"] = merged_history.lead_updates(client, covered)
        doc["dead_letters"] = merged_history.dead_letters(client, covered, doc.get("emails") or [])
        return covered
    finally:
        client.close()


def current_state(settings: Settings, lead_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The lead's state as the worker's core builds it from its merged events (re-keyed to `lead_id`): score,
    score contributions, stage, facts and pending deadlines, at now. None without rules to evaluate."""
    from engine.core import LeadState, pending_deadlines
    from engine.core.evaluate import build_view, evaluate
    from engine.events import InvalidEvent, parse_event
    from engine.language import load_rules

    try:
        rules = load_rules([settings.rules_path])
    except Exception:  # no rules here: the state cannot be rebuilt, the rest of the document stands
        return None
    state: LeadState | None = None
    for row in events:
        raw = {
            "type": row["type"],
            "event": row["name"] or None,
            "messageId": row["message_id"],
            "userId": lead_id,
            "anonymousId": row["anonymous_id"] or None,
            "previousId": row["previous_id"] or None,
            "timestamp": int(row["at_ms"]),
            "properties": row["properties"] if isinstance(row["properties"], dict) else {},
            "traits": row["traits"] if isinstance(row["traits"], dict) else {},
            "context": row["context"] if isinstance(row["context"], dict) else {},
        }
        try:
            event = parse_event(orjson.dumps({k: v for k, v in raw.items() if v is not None}))
        except InvalidEvent:
            continue
        state = evaluate(rules, state, event, reuse_state=True).state
    if state is None:
        return None
    now_ms = int(time.time() * 1000)
    view = build_view(rules, state, now_ms)
    return {
        "score": view["score"],
        "stage": view["stage"],
        "scores": view["scores"],
        "score_contributions": view["score_top"],
        "view": view,
        "facts": state.facts,
        "pending_deadlines_ms": sorted(pending_deadlines(rules, state)),
    }


def consent_history(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every consent change the stores hold: identify traits about consent, unsubscribe events, and the worker's
    `consent` lead updates, oldest first."""
    out: list[dict[str, Any]] = []
    for event in doc.get("events", []):
        traits = event.get("traits") if isinstance(event.get("traits"), dict) else {}
        given = {k: v for k, v in traits.items() if k.lower().replace("-", "_") in CONSENT_TRAITS}
        if event.get("type") == "identify" and given:
            out.append({"at_ms": event["at_ms"], "source": "identify", "lead_id": event["lead_id"], "traits": given})
        elif event.get("name") in CONSENT_EVENTS:
            found = {"at_ms": event["at_ms"], "source": "event", "lead_id": event["lead_id"], "event": event["name"]}
            out.append(found)
    for update in doc.get("lead_updates", []):
        if update.get("kind") == "consent":
            out.append({"at_ms": update["at_ms"], "source": "lead_update", "lead_id": update["lead_id"], **update})
    return sorted(out, key=lambda entry: entry["at_ms"])


async def export(settings: Settings, lead_id: str, *, clickhouse: bool = True) -> dict[str, Any]:
    """The whole document (see the module docstring). Never raises for an unreachable store: it is named under
    `unavailable`."""
    doc: dict[str, Any] = {
        "lead_id": lead_id,
        "exported_at_ms": int(time.time() * 1000),
        "ids": [lead_id],
        "profiles": {},
        "assignment": {},
        "events": [],
        "actions": [],
        "lead_updates": [],
        "dead_letters": [],
        "unavailable": {},
    }
    redis = Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    ids = [lead_id]
    try:
        ids = await from_redis(settings, redis, lead_id, doc)
    except Exception as exc:
        doc["unavailable"]["redis"] = f"{redact_url(settings.redis_url)}: {type(exc).__name__}: {exc}"
    finally:
        await redis.aclose()
    if clickhouse:
        ids = from_clickhouse(settings, ids, doc)
    else:
        doc["unavailable"]["clickhouse"] = "skipped"
    doc["ids"] = ids
    doc["state"] = current_state(settings, lead_id, doc["events"])
    doc["consent_history"] = consent_history(doc)
    return doc
