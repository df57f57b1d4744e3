"""Rule-set versions: the records `nudge rules deploy` / `rollback` publish on the compacted `rules` topic, the status
record each worker publishes there, and the Kafka reads and writes of both. No Faust: the commands use it too.

Layout of the topic (`engine.kafka.topics.RULES`, one partition, `cleanup.policy=compact`):

- `deploy/<at_ms, 13 digits>/<version>` -> `Deploy`: the whole validated rule set (every file's text, in load
  order), its version, time, author and message. One key per deploy, so compaction keeps them all (the history);
  the record with the highest offset is the deployed version.
- `status/<worker id>` -> `WorkerStatus`: the version a worker evaluates with, since when, and per clickstream
  partition the first input offset it evaluated with it (compaction keeps the latest per worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from engine.config import Settings
from engine.core import RuleSet
from engine.kafka import topics
from engine.kafka.security import client_options

DEPLOY_PREFIX = b"deploy/"
STATUS_PREFIX = b"status/"
READ_TIMEOUT_S = 10.0


class BadRulesRecord(ValueError):
    """A `rules` topic record that is not one of ours."""


@dataclass(frozen=True)
class Deploy:
    """One deployed rule set. `version` is `RuleSet.version` (a hash of every rule's id and version, so of the
    rules' semantics: the same content deployed again, e.g. by a rollback, has the same version). `files`: (name,
    text) of every rule file, in load order."""

    version: str
    files: tuple[tuple[str, str], ...]
    at_ms: int
    author: str
    message: str = ""
    rules: tuple[str, ...] = ()  # rule ids, for the history

    @property
    def key(self) -> bytes:
        return DEPLOY_PREFIX + f"{self.at_ms:013d}/{self.version}".encode()

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version, "at_ms": self.at_ms, "author": self.author, "message": self.message,
                "rules": list(self.rules), "files": [{"name": n, "text": t} for n, t in self.files],
            }
        )

    @classmethod
    def parse(cls, value: bytes) -> Deploy:
        try:
            doc = orjson.loads(value)
            return cls(
                version=str(doc["version"]),
                files=tuple((str(f["name"]), str(f["text"])) for f in doc["files"]),
                at_ms=int(doc["at_ms"]),
                author=str(doc.get("author", "")),
                message=str(doc.get("message", "")),
                rules=tuple(str(r) for r in doc.get("rules", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRulesRecord(f"not a rule-set deploy: {exc}") from None


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker evaluates with: `version` since `since_ms` (`source`: deploy, files or watch), published
    at `at_ms`; `switch`: clickstream partition -> the first input offset evaluated with `version` (its earlier
    inputs were evaluated with the previous version)."""

    worker: str
    version: str
    since_ms: int
    at_ms: int
    source: str = "deploy"
    previous: str = ""
    switch: dict[int, int] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return STATUS_PREFIX + self.worker.encode()

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "worker": self.worker, "version": self.version, "since_ms": self.since_ms, "at_ms": self.at_ms,
                "source": self.source, "previous": self.previous,
                "switch": {str(p): o for p, o in sorted(self.switch.items())},
            }
        )

    @classmethod
    def parse(cls, value: bytes) -> WorkerStatus:
        try:
            doc = orjson.loads(value)
            return cls(
                worker=str(doc["worker"]), version=str(doc["version"]), since_ms=int(doc["since_ms"]),
                at_ms=int(doc["at_ms"]), source=str(doc.get("source", "")), previous=str(doc.get("previous", "")),
                switch={int(p): int(o) for p, o in (doc.get("switch") or {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadRulesRecord(f"not a worker status: {exc}") from None


@dataclass
class RulesLog:
    """What the `rules` topic holds: deploys in offset order, the latest status of each worker, and the offset
    after the last record read."""

    deploys: list[Deploy] = field(default_factory=list)
    statuses: dict[str, WorkerStatus] = field(default_factory=dict)
    next_offset: int = 0

    @property
    def latest(self) -> Deploy | None:
        return self.deploys[-1] if self.deploys else None

    def add(self, key: bytes | None, value: bytes | None) -> Deploy | None:
        """Take one record; returns the deploy it holds (None for anything else). Bad records are skipped."""
        if key is None or value is None:
            return None
        with contextlib.suppress(BadRulesRecord):
            if key.startswith(DEPLOY_PREFIX):
                deploy = Deploy.parse(value)
                self.deploys.append(deploy)
                return deploy
            if key.startswith(STATUS_PREFIX):
                status = WorkerStatus.parse(value)
                self.statuses[status.worker] = status
        return None

    def find(self, version: str) -> Deploy | None:
        """The latest deploy of `version` (a unique prefix of it is enough)."""
        found = [d for d in self.deploys if d.version.startswith(version)]
        if len({d.version for d in found}) != 1:
            return None
        return found[-1]


def author_name() -> str:
    """The user name for `--author`'s default."""
    with contextlib.suppress(Exception):
        return os.getlogin()
    return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def worker_id(settings: Settings) -> str:
    """Stable per worker slot (a restarted worker replaces its own status record): app id, host, web port."""
    return f"{settings.app_id}@{socket.gethostname()}:{settings.web_port}"


def snapshot(files: Sequence[Path], rules: RuleSet, author: str, message: str = "") -> Deploy:
    """The deploy of the rule files `files` (in load order, already validated into `rules`)."""
    texts = tuple((str(path), path.read_text(encoding="utf-8")) for path in files)
    return Deploy(rules.version, texts, int(time.time() * 1000), author, message, tuple(r.id for r in rules.rules))


def compile_deploy(deploy: Deploy, load: Callable[[list[Path]], RuleSet]) -> RuleSet:
    """The `RuleSet` of a deploy: `load` (the language's `load_rules` with the connectors check, passed in by the
    commands: the worker package does not import the language) reads its files, written to a private directory
    and named so that they load in their deployed order. Raises what `load` raises (`RuleFileError`)."""
    with tempfile.TemporaryDirectory(prefix="nudge-rules-") as directory:
        paths = []
        for n, (name, text) in enumerate(deploy.files):
            path = Path(directory) / f"{n:03d}-{Path(name).name}"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        return load(paths)


async def ensure_rules_topic(settings: Settings) -> None:
    """Create the `rules` topic (one partition, compacted) unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        if settings.topic(topics.RULES) not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                new = NewTopic(
                    settings.topic(topics.RULES), num_partitions=1, replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"},
                )
                await admin.create_topics([new])
    finally:
        await admin.close()


async def publish(settings: Settings, key: bytes, value: bytes) -> None:
    """Produce one record to the `rules` topic and wait for the broker's acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic(topics.RULES), value, key=key, partition=0)
    finally:
        await producer.stop()


async def read_log(settings: Settings, timeout_s: float = READ_TIMEOUT_S) -> RulesLog:
    """Everything on the `rules` topic up to its end now (creates the topic when missing). Raises
    `TimeoutError` when the end is not reached within `timeout_s`."""
    await ensure_rules_topic(settings)
    log = RulesLog()
    consumer = _consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic(topics.RULES), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {tp.topic} to its end ({end}) within {timeout_s} s")
            batches = await consumer.getmany(tp, timeout_ms=500)
            for record in batches.get(tp, []):
                log.add(record.key, record.value)
        log.next_offset = max(end, await consumer.position(tp))
    finally:
        await consumer.stop()
    return log


async def follow(
    settings: Settings, start_offset: int, on_deploy: Callable[[Deploy], Awaitable[None]], poll_s: float = 0.5
) -> None:
    """Read the `rules` topic from `start_offset` on, forever, calling `on_deploy` for each new deploy record
    (awaited before the next record is read). Cancel to stop. Broker errors are retried."""
    while True:
        consumer = _consumer(settings)
        try:
            await consumer.start()
            tp = TopicPartition(settings.topic(topics.RULES), 0)
            consumer.assign([tp])
            consumer.seek(tp, start_offset)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=int(poll_s * 1000))
                for record in batches.get(tp, []):
                    start_offset = record.offset + 1
                    deploy = RulesLog().add(record.key, record.value)
                    if deploy is not None:
                        await on_deploy(deploy)
        except asyncio.CancelledError:
            raise
        except Exception:  # the broker went away: read on from where we were
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,  # a deploy reaches the workers fast on every broker (Tansu answers only at this wait)
        **client_options(settings),
    )


@dataclass(frozen=True)
class RuleVersions:
    """How a worker follows deploys: `load` compiles a deploy's files (the language's loader with the worker's
    connectors check), `next_offset` is where on the `rules` topic it goes on reading, `source` says where its
    first rule set came from (`deploy`: the latest deploy; `files`: NUDGE_RULES_PATH, nothing deployed yet)."""

    load: Callable[[list[Path]], RuleSet]
    next_offset: int
    source: str = "files"
