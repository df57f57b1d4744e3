"""Read history back out of the store (read-only, `FINAL`: each event and action once): stored events as `Event`s
for replay, and the actions that fired."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from engine.events import Event, InvalidEvent, parse_event


@dataclass(frozen=True, slots=True)
class FiredAction:
    action_id: str
    rule: str
    rule_version: str
    lead_id: str
    fired_at_ms: int


class EventReader:
    """Streams stored events in event-time order, as the worker saw them: the raw JSON re-parsed with the stored
    receive time, so the event time and message id are the ones the live rules used. Rows whose raw JSON no
    longer parses (an older parser accepted them) are skipped and counted in `skipped`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.skipped = 0

    def events(self, since_ms: int, until_ms: int, *, whole_lead_history: bool = True) -> Iterator[Event]:
        """Events before `until_ms`, in event-time order. With `whole_lead_history` (the default): the full
        stored history of every lead that had an event or a fired action in `[since_ms, until_ms)`, so lead
        state (sequences, scores, cooldowns, pending deadlines) is rebuilt as the live worker had it; without
        it, only the events inside the window."""
        window = "toUnixTimestamp64Milli({col}) >= %(since)s AND toUnixTimestamp64Milli({col}) < %(until)s"
        if whole_lead_history:
            where = (
                "toUnixTimestamp64Milli(timestamp) < %(until)s AND lead_id IN ("
                f"SELECT lead_id FROM events WHERE {window.format(col='timestamp')} "
                "UNION DISTINCT SELECT lead_id FROM actions "
                f"WHERE step = 'fired' AND {window.format(col='at')})"
            )
        else:
            where = window.format(col="timestamp")
        sql = (
            "SELECT raw, toUnixTimestamp64Milli(received_at) FROM events FINAL "
            f"WHERE {where} ORDER BY timestamp, lead_id, message_id"
        )
        with self.client.query_rows_stream(sql, parameters={"since": since_ms, "until": until_ms}) as rows:
            for raw, received_at_ms in rows:
                try:
                    yield parse_event(raw, received_at_ms=received_at_ms)
                except InvalidEvent:
                    self.skipped += 1


def fired_actions(client: Client, since_ms: int, until_ms: int) -> list[FiredAction]:
    """Actions the live workers fired with `fired_at` in the window (event time), one per action id."""
    rows = client.query(
        "SELECT action_id, any(rule), any(rule_version), any(lead_id), min(toUnixTimestamp64Milli(at)) "
        "FROM actions FINAL WHERE step = 'fired' "
        "AND toUnixTimestamp64Milli(at) >= %(since)s AND toUnixTimestamp64Milli(at) < %(until)s "
        "GROUP BY action_id ORDER BY action_id",
        parameters={"since": since_ms, "until": until_ms},
    ).result_rows
    return [FiredAction(a, r, v, lead, int(t)) for a, r, v, lead, t in rows]
