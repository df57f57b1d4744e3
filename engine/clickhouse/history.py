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


@dataclass(frozen=True, slots=True)
class ActionStep:
    """One recorded step of an action: `fired` (the worker), or a delivery outcome (the dispatcher)."""

    at_ms: int
    step: str
    attempt: int
    reason: str
    next_attempt_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ActionHistory:
    """Everything the store holds about one action of a lead, its steps in time order."""

    action_id: str
    rule: str
    connector: str
    marketing: bool
    steps: tuple[ActionStep, ...]
    journey_step: str = ""  # the journey step that sent it ('' outside journeys)

    @property
    def fired_at_ms(self) -> int | None:
        return next((s.at_ms for s in self.steps if s.step == "fired"), None)

    @property
    def result(self) -> ActionStep | None:
        """The step that says how it ended, or where it stands: `sent` if it ever was (a later `duplicate` is a
        redelivery of a sent action), else the latest `suppressed` / `failed`, else the latest delivery step
        (`deferred`, `retried`, `duplicate`: still waiting or handled elsewhere); None when only fired (the
        dispatcher has not recorded anything yet)."""
        delivery = [s for s in self.steps if s.step != "fired"]
        for wanted in (("sent",), ("suppressed", "failed", "held_out")):
            final = [s for s in delivery if s.step in wanted]
            if final:
                return final[-1] if wanted != ("sent",) else final[0]
        return delivery[-1] if delivery else None

    @property
    def outcome(self) -> str:
        """`sent`, `suppressed`, `failed`, `held_out`, `deferred`, `retried`, `duplicate`, or `pending` (fired
        only)."""
        result = self.result
        return result.step if result is not None else "pending"

    @property
    def reason(self) -> str:
        result = self.result
        return result.reason if result is not None else ""

    def to_json(self) -> dict[str, object]:
        return {
            "action_id": self.action_id,
            "rule": self.rule,
            "connector": self.connector,
            "marketing": self.marketing,
            "journey_step": self.journey_step,
            "fired_at_ms": self.fired_at_ms,
            "outcome": self.outcome,
            "reason": self.reason,
            "steps": [
                {"at_ms": s.at_ms, "step": s.step, "attempt": s.attempt, "reason": s.reason,
                 "next_attempt_ms": s.next_attempt_ms}
                for s in self.steps
            ],
        }  # fmt: skip


def lead_actions(client: Client, lead_id: str, limit: int = 20) -> list[ActionHistory]:
    """The lead's `limit` most recent actions (by their first recorded step), oldest first, each with every step
    the store holds (fired, deferred, suppressed, sent, ...)."""
    rows = client.query(
        "SELECT action_id, step, attempt, toUnixTimestamp64Milli(at), rule, connector, reason, "
        "toUnixTimestamp64Milli(next_attempt_at), marketing, journey_step FROM actions FINAL "
        "WHERE lead_id = {lead:String} AND action_id IN ("
        "  SELECT action_id FROM actions FINAL WHERE lead_id = {lead:String} "
        "  GROUP BY action_id ORDER BY min(at) DESC, action_id LIMIT {limit:UInt32}"
        ") ORDER BY at, step = 'fired' DESC, attempt",
        parameters={"lead": lead_id, "limit": limit},
    ).result_rows
    steps: dict[str, list[ActionStep]] = {}
    about: dict[str, tuple[str, str, bool]] = {}
    journey_steps: dict[str, str] = {}
    for action_id, step, attempt, at_ms, rule, connector, reason, next_ms, marketing, journey_step in rows:
        steps.setdefault(action_id, []).append(
            ActionStep(int(at_ms), str(step), int(attempt), str(reason), None if next_ms is None else int(next_ms))
        )
        if step == "fired" or action_id not in about:  # the fired row knows the marketing flag
            about[action_id] = (str(rule), str(connector), bool(marketing))
        if journey_step:
            journey_steps[action_id] = str(journey_step)
    histories = [ActionHistory(a, *about[a], tuple(s), journey_steps.get(a, "")) for a, s in steps.items()]
    return sorted(histories, key=lambda h: (h.steps[0].at_ms, h.action_id))
