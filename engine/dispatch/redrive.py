"""Re-driving dead letters (`nudge dead-letters redrive`): the actions the dispatcher dead-lettered are read back
from `dead-letters` and produced to `actions` again, where the dispatcher delivers them like any other action."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from engine.config import Settings
from engine.core.model import Action
from engine.dispatch.policies.caps import parse_duration_s
from engine.kafka.security import client_options
from engine.kafka.topics import ACTIONS, DEAD_LETTERS


def parse_since(text: str, now_ms: int) -> int:
    """`--since`: a duration back from now (`90s`, `15m`, `4h`, `1d`, `1w`) or an ISO-8601 date or date-time
    (`2026-01-05`, `2026-01-05T10:00:00Z`; without an offset it is UTC) → epoch milliseconds. Raises ValueError
    with a message that says what to write."""
    try:
        return now_ms - int(parse_duration_s(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90m, 4h, 1d) nor an ISO date/time (2026-01-05, 2026-01-05T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def action_of(letter: Any) -> Action | None:
    """The action a dead letter carries, when the dispatcher wrote it for an action it could not deliver (source
    `dispatcher`, the payload a valid action); None for anything else (the worker's letters, `actions` records
    that were not JSON or not an action)."""
    if not isinstance(letter, dict) or letter.get("source") != "dispatcher":
        return None
    payload = letter.get("payload")
    if not isinstance(payload, str) or not payload:
        return None
    try:
        raw = base64.b64decode(payload) if letter.get("payload_encoding") == "base64" else payload.encode()
        action = Action.from_json(raw)
    except Exception:  # not an action: a malformed record the dispatcher dead-lettered as it came
        return None
    return action if action.action_id and action.connector else None


@dataclass(frozen=True)
class RedriveSelection:
    """Which dead letters to re-drive: the dispatcher's letters of actions of `rule` (any when None), written at or
    after `since_ms` and at or before `until_ms` (the moment the command started, so letters written while it
    runs, its own re-drives failing again among them, are left for the next run)."""

    rule: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def select(self, letters: Iterable[Any]) -> list[Action]:
        """The actions to produce again, each action id once (an action dead-lettered twice, e.g. re-driven and
        failed again, is re-driven once), in the order their first letter was read."""
        chosen: dict[str, Action] = {}
        for letter in letters:
            action = action_of(letter)
            if action is None or action.action_id in chosen:
                continue
            at_ms = letter.get("at_ms")
            if not isinstance(at_ms, int):
                continue
            if self.rule is not None and action.rule != self.rule:
                continue
            if self.since_ms is not None and at_ms < self.since_ms:
                continue
            if self.until_ms is not None and at_ms > self.until_ms:
                continue
            chosen[action.action_id] = action
        return list(chosen.values())


@dataclass(frozen=True)
class RedriveResult:
    """What a re-drive did: dead letters read, and the actions produced again to `actions`."""

    letters_read: int
    redriven: list[Action]


async def read_dead_letters(settings: Settings, until_ms: int, idle_ms: int = 500) -> list[Any]:
    """Every record of the `dead-letters` topic from the beginning, as JSON (records that are not JSON skipped).

    Reads without a consumer group (commits nothing) up to the end offsets taken at the start, then on until a
    fetch of `idle_ms` brings nothing or only letters written after `until_ms`: Tansu (the dev broker) reports an
    end offset short of the last batch's tail, and a busy topic on Kafka may never go quiet."""
    topic = settings.topic(DEAD_LETTERS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **client_options(settings),
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[Any] = []
        while True:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=10_000)
            fresh = []
            for records in batch.values():
                for record in records:
                    try:
                        fresh.append(orjson.loads(record.value or b""))
                    except orjson.JSONDecodeError:
                        continue
            letters.extend(fresh)
            caught_up = all([await consumer.position(tp) >= ends[tp] for tp in partitions])
            only_newer = all(isinstance(d, dict) and (d.get("at_ms") or 0) > until_ms for d in fresh)
            if caught_up and (not batch or only_newer):
                return letters
    finally:
        await consumer.stop()


async def redrive(settings: Settings, selection: RedriveSelection) -> RedriveResult:
    """Produce the selected dead-lettered actions to `actions` again (key = lead id, as the worker does; value =
    the action), and return once the broker acknowledged all of them.

    Idempotency still applies: the dispatcher claims each action id as usual, so an id that was delivered in the
    meantime (or by an earlier re-drive) is recorded as a `duplicate` and not sent again. A re-driven action
    starts with a fresh retry budget. Raises the client's error when the broker cannot be reached."""
    until_ms = selection.until_ms if selection.until_ms is not None else int(time.time() * 1000)
    selection = RedriveSelection(selection.rule, selection.since_ms, until_ms)
    letters = await read_dead_letters(settings, until_ms)
    actions = selection.select(letters)
    if actions:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5, **client_options(settings)
        )
        await producer.start()
        try:
            topic = settings.topic(ACTIONS)
            sent = [await producer.send(topic, action.to_bytes(), key=action.lead_id.encode()) for action in actions]
            await asyncio.gather(*sent)  # every acknowledgement, or the first error
        finally:
            await producer.stop()
    return RedriveResult(len(letters), actions)
