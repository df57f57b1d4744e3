"""The worker's Faust app: topics and the per-lead state table, built from `Settings`. No behaviour lives here: the
input loop and the timer that use these objects are attached by `engine.worker.lead_worker.LeadWorker`."""

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
    privacy_requests: TopicT | None = None  # worker-internal erasure/suppression requests (engine.privacy.records)
    privacy: TopicT | None = None  # the privacy pipeline's control topic: the worker's receipts go there


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
    """One `NudgeFaustApp` (Faust with fast delivery) and its channels; nothing is connected or started.

    - Broker profile from `faust_ext.broker_profiles` (dev = Tansu workarounds, kafka = real Kafka), memory store
      rebuilt from the changelog on start, web server on `settings.web_port` (serves `/metrics`).
    - Topics (names from `engine.kafka.topics` + `settings.topic()`), all with raw key/value bytes (the worker
      decodes with orjson, several times faster than Faust's codecs): `clickstream` (key = lead id) and the
      worker-internal `identity-handovers` (same partition count: one input reads both and they must be
      co-partitioned), and the worker-internal `privacy-requests` (co-partitioned too: a lead's erasure is handled
      in order with its events, by the worker that owns its state); `actions`, `dead-letters`, `lead-updates` and
      `privacy` (receipts) are output only.
    - Table `leads`: lead id (UTF-8 bytes, the record key) → `LeadState.to_bytes()`, changelog-backed,
      partitioned like `clickstream`. One plain entry per lead instead of Faust windowed tables: a lead's rules
      need several windows of different lengths at once (abandonment episodes, counting windows, sequences, a
      decaying score), which the pure core keeps inside `LeadState`; one entry means one changelog record per lead
      per batch, and evaluation stays a pure function of (state, input) that `nudge simulate` replays without
      Faust.
    """
    app = NudgeFaustApp(**faust_settings(settings))
    clickstream = _raw_topic(app, settings.topic(topics.CLICKSTREAM), settings.partitions)
    identity_handovers = _raw_topic(app, settings.topic(topics.IDENTITY_HANDOVERS), settings.partitions)
    actions = _raw_topic(app, settings.topic(topics.ACTIONS), settings.partitions)
    dead_letters = _raw_topic(app, settings.topic(topics.DEAD_LETTERS), settings.partitions)
    lead_updates = _raw_topic(app, settings.topic(topics.LEAD_UPDATES), settings.partitions)
    privacy_requests = _raw_topic(app, settings.topic(topics.PRIVACY_REQUESTS), settings.partitions)
    privacy = _raw_topic(app, settings.topic(topics.PRIVACY), settings.partitions)
    leads = app.Table(
        LEADS_TABLE,
        default=None,
        key_type=bytes,  # bytes key and value: Faust then writes and recovers the changelog raw
        value_type=bytes,
        partitions=settings.partitions,
    )
    return NudgeApp(
        app, clickstream, identity_handovers, actions, dead_letters, leads, lead_updates, privacy_requests, privacy
    )
