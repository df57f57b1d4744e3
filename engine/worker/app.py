"""The Faust app factory: topics and the per-lead state table, built from `Settings`. No behaviour lives here.

Contract of `create_app(settings)`:
- One `faust.App` (`NudgeFaustApp`: per-message delivery without Faust's per-message tasks, see
  `faust_ext/fast_delivery.py`) with the broker profile from `faust_ext/broker_profiles.py` (dev = Tansu
  workarounds, kafka = real Kafka), memory store rebuilt from the changelog on start, web server on
  `settings.web_port` (serves `/metrics`).
- Topics (names from `engine/kafka/topics.py` + `settings.topic()`), all with raw key/value bytes (the worker
  decodes with orjson, several times faster than Faust's codecs):
  `clickstream` (key = lead id) and the worker-internal `identity-handovers` (same partition count: they are consumed by
  one agent and must be co-partitioned), `actions` and `dead-letters` (output only).
- Table `leads`: lead id (UTF-8 bytes, as the record key) -> `LeadState.to_bytes()`, changelog-backed,
  partitioned like `clickstream`.
  Why one plain table entry per lead instead of Faust windowed tables: a lead's rules need several windows of
  different lengths at once (abandonment episodes, counting windows, sequences, a decaying score), which the
  pure core keeps inside `LeadState`; one entry means one changelog record per lead per batch, and evaluation
  stays a pure function of (state, input) that `nudge simulate` can replay without Faust.

The agent and the timer that use these objects are attached by `engine.worker.lead_worker.LeadWorker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TopicT

from engine.config import Settings
from engine.kafka import topics
from engine.worker.faust_ext.broker_profiles import faust_settings
from engine.worker.faust_ext.fast_delivery import NudgeFaustApp

LEADS_TABLE = "leads"


@dataclass
class NudgeApp:
    """The Faust app and the channels the worker shell uses."""

    app: faust.App
    clickstream: TopicT
    identity_handovers: TopicT
    actions: TopicT
    dead_letters: TopicT
    leads: Any  # faust.Table[bytes, bytes]; Faust's table types are not generic at runtime
    lead_updates: TopicT | None = None  # stage changes from the core (Evaluation.updates)


def _raw_topic(app: faust.App, name: str, partitions: int | None = None) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=False,
    )


def create_app(settings: Settings) -> NudgeApp:
    app = NudgeFaustApp(**faust_settings(settings))
    clickstream = _raw_topic(app, settings.topic(topics.CLICKSTREAM), settings.partitions)
    identity_handovers = _raw_topic(app, settings.topic(topics.IDENTITY_HANDOVERS), settings.partitions)
    actions = _raw_topic(app, settings.topic(topics.ACTIONS), settings.partitions)
    dead_letters = _raw_topic(app, settings.topic(topics.DEAD_LETTERS), settings.partitions)
    lead_updates = _raw_topic(app, settings.topic(topics.LEAD_UPDATES), settings.partitions)
    leads = app.Table(
        LEADS_TABLE,
        default=None,
        key_type=bytes,  # bytes key and value: Faust then writes and recovers the changelog raw
        value_type=bytes,
        partitions=settings.partitions,
    )
    return NudgeApp(app, clickstream, identity_handovers, actions, dead_letters, leads, lead_updates)
