"""Journey KPIs and a lead's place in its journeys, from the stored journey records (`lead_updates`, kind
`journey`: docs/rules.md "Records") and the journey sends (`actions.journey_step`). Read-only, `FINAL`.

A record the worker published twice (re-emitted after a crash, stored at another Kafka offset) is counted once: a
record is identified by (lead, journey, event, step, reason, entry time, time), which no two distinct records
share (a step reached again is reached later, after a wait)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

# One row per distinct journey record in the window, with its place among the records of its entry (`seq`, by
# time then Kafka position: the order the worker published them; a repeated record keeps its first place).
_RECORDS = """
    SELECT lead_id, journey, event, step, reason, entry_ms, at_ms, min(seq) AS first_seq FROM (
        SELECT lead_id, JSONExtractString(payload, 'journey') AS journey,
               JSONExtractString(payload, 'event') AS event, JSONExtractString(payload, 'step') AS step,
               JSONExtractString(payload, 'reason') AS reason, JSONExtractInt(payload, 'entry_ms') AS entry_ms,
               toInt64(toUnixTimestamp64Milli(at)) AS at_ms,
               row_number() OVER (PARTITION BY lead_id, journey, entry_ms
                                  ORDER BY at, kafka_partition, kafka_offset) AS seq
        FROM lead_updates FINAL
        WHERE kind = 'journey' AND toInt64(toUnixTimestamp64Milli(at)) >= %(since)s
          AND toInt64(toUnixTimestamp64Milli(at)) < %(until)s
    ) GROUP BY lead_id, journey, event, step, reason, entry_ms, at_ms"""

_PER_STEP = f"""
    SELECT journey, step, event, reason, count(), min(at_ms - entry_ms), min(first_seq) FROM ({_RECORDS})
    GROUP BY journey, step, event, reason"""

# Journey sends per step: fired (event time in the window) and sent (first `sent` outcome in the window), joined
# to the fired row that holds the journey step.
_SENDS = """
    SELECT f.journey, f.journey_step_id, countIf(f.fired_ms >= %(since)s AND f.fired_ms < %(until)s),
           countIf(s.action_id != '')
    FROM (
        SELECT action_id, any(rule) AS journey, any(journey_step) AS journey_step_id,
               min(toInt64(toUnixTimestamp64Milli(at))) AS fired_ms
        FROM actions FINAL WHERE step = 'fired' AND journey_step != '' GROUP BY action_id
    ) AS f
    LEFT JOIN (
        SELECT action_id FROM actions FINAL
        WHERE step = 'sent' AND toInt64(toUnixTimestamp64Milli(at)) >= %(since)s
          AND toInt64(toUnixTimestamp64Milli(at)) < %(until)s
        GROUP BY action_id
    ) AS s ON s.action_id = f.action_id
    GROUP BY f.journey, f.journey_step_id"""


def _step_row(step: str) -> dict[str, Any]:
    return {"step": step, "reached": 0, "fired": 0, "sent": 0, "exited": {}, "completed": 0, "goal": 0}


def journey_kpis(client: Client, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
    """Per journey (rule id), records with their time in `[since_ms, until_ms)`:

    `{"journey", "entered", "reached", "fired", "sent", "exited": {reason: n}, "completed", "goal", "goal_rate",
    "steps": [{"step", "reached", "fired", "sent", "exited": {reason: n}, "completed", "goal"}, ...]}`

    - entered: entries; reached: steps reached (a step passed twice in a loop counts twice); exited: exits by
      reason (exit_on, step_removed, loop_guard), at the step the lead was at; completed: `end: true` or off the
      last step, at that step; goal: the journey's `goal:` matched within `goal_within` of entry (its conversion),
      at the step the lead was at (a goal after the lead left counts for the journey only); goal_rate = goal /
      entered (None without entries).
    - fired: journey sends with their fire time (event time) in the window; sent: journey sends whose first
      `sent` outcome (the dispatcher's clock) is in the window — a send held, suppressed or failed is fired, not
      sent.
    - Steps in the order leads reach them: the earliest time after entry at which any lead reached the step, then
      the earliest place among its entry's records (a send and the wait after it are reached at the same time),
      then the step id; journeys by id.
    """
    params = {"since": since_ms, "until": until_ms}
    journeys: dict[str, dict[str, Any]] = {}
    order: dict[tuple[str, str], tuple[int, int]] = {}

    def journey(name: str) -> dict[str, Any]:
        return journeys.setdefault(
            name,
            {"journey": name, "entered": 0, "reached": 0, "fired": 0, "sent": 0, "exited": {}, "completed": 0,
             "goal": 0, "goal_rate": None, "steps": {}},
        )  # fmt: skip

    def step_of(j: dict[str, Any], step: str) -> dict[str, Any]:
        row: dict[str, Any] = j["steps"].setdefault(step, _step_row(step))
        return row

    for name, step, event, reason, n, first, seq in client.query(_PER_STEP, parameters=params).result_rows:
        j, n = journey(str(name)), int(n)
        step = str(step)
        if event == "entered":
            j["entered"] += n
            continue
        if event == "reached":
            order[(j["journey"], step)] = (int(first), int(seq))
        if event == "exited":
            j["exited"][reason] = j["exited"].get(reason, 0) + n
        elif event in ("reached", "completed", "goal"):
            j[event] += n
        if not step:  # a goal after the lead left: the journey's only
            continue
        row = step_of(j, step)
        if event == "exited":
            row["exited"][reason] = row["exited"].get(reason, 0) + n
        elif event in ("reached", "completed", "goal"):
            row[event] += n
    for rule, step, fired, sent in client.query(_SENDS, parameters=params).result_rows:
        if not int(fired) and not int(sent):
            continue
        j = journey(str(rule))
        row = step_of(j, str(step))
        row["fired"] += int(fired)
        row["sent"] += int(sent)
        j["fired"] += int(fired)
        j["sent"] += int(sent)
    out = []
    for name in sorted(journeys):
        j = journeys[name]
        j["goal_rate"] = round(j["goal"] / j["entered"], 4) if j["entered"] else None
        steps = j["steps"].values()
        j["steps"] = sorted(steps, key=lambda r: (*order.get((name, r["step"]), (2**62, 0)), r["step"]))
        out.append(j)
    return out


@dataclass(frozen=True, slots=True)
class JourneyStatus:
    """Where a lead stands in one journey, from its journey records: `status` is `in` (waiting at `step` since
    `since_ms`), `completed` (at `step`), or `exited` (at `step`, `reason`); `entry_ms` the current or last
    entry; `goal_ms` when the goal matched for that entry (None: not yet)."""

    journey: str
    status: str
    step: str | None
    since_ms: int
    entry_ms: int
    reason: str | None = None
    goal_ms: int | None = None
    entries: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "journey": self.journey, "status": self.status, "step": self.step, "since_ms": self.since_ms,
            "entry_ms": self.entry_ms, "reason": self.reason, "goal_ms": self.goal_ms, "entries": self.entries,
        }  # fmt: skip


def journey_status(records: Sequence[dict[str, Any]]) -> list[JourneyStatus]:
    """Fold one lead's journey records (payloads, in the order they were published) into its status per journey,
    by journey id. Pure: `lead_journeys` reads the records, tests feed them directly. Records re-emitted after a
    worker crash repeat a whole run of records in order, so they end where the first copies did."""
    current: dict[str, JourneyStatus] = {}
    for r in records:
        name, event = str(r.get("journey") or ""), r.get("event")
        if not name:
            continue
        at, entry = int(r.get("at_ms") or 0), int(r.get("entry_ms") or 0)
        step = r.get("step")
        was = current.get(name)
        if event == "entered":
            if was is not None and was.entry_ms == entry and was.status == "in":
                continue  # a repeat
            entries = 1 if was is None else was.entries + (0 if was.entry_ms == entry else 1)
            current[name] = JourneyStatus(name, "in", None, at, entry, entries=entries)
        elif was is None or was.entry_ms != entry:
            continue  # records of an entry whose `entered` is not stored (outside the history read)
        elif event == "reached":
            if was.status == "in" and (was.step != step or at > was.since_ms):  # (the same step later: a loop)
                current[name] = JourneyStatus(name, "in", step, at, entry, None, was.goal_ms, was.entries)
        elif event in ("completed", "exited"):
            current[name] = JourneyStatus(
                name, str(event), step, at, entry, r.get("reason"), was.goal_ms, was.entries
            )
        elif event == "goal" and was.goal_ms is None:
            current[name] = JourneyStatus(
                name, was.status, was.step, was.since_ms, entry, was.reason, at, was.entries
            )
    return [current[name] for name in sorted(current)]


def lead_journeys(client: Client, ids: Sequence[str], limit: int = 5000) -> list[JourneyStatus]:
    """The journey status of a lead (every id merged into it): its last `limit` journey records, folded by
    `journey_status` in the order they were published (time, then Kafka position)."""
    rows = client.query(
        "SELECT payload FROM ("
        " SELECT payload, at, kafka_partition, kafka_offset FROM lead_updates FINAL"
        " WHERE kind = 'journey' AND lead_id IN {ids:Array(String)}"
        " ORDER BY at DESC, kafka_partition DESC, kafka_offset DESC LIMIT {limit:UInt32}"
        ") ORDER BY at, kafka_partition, kafka_offset",
        parameters={"ids": list(ids), "limit": limit},
    ).result_rows
    records = []
    for (payload,) in rows:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            records.append(doc)
    return journey_status(records)
