"""Faust/aiokafka settings per broker profile (`NUDGE_BROKER_PROFILE`): the one place where broker quirks are
worked around. Tansu also has no idempotent/transactional producer, so every profile processes at-least-once;
actions carry deterministic ids so a redelivered action is recognised downstream."""

from __future__ import annotations

from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from engine.config import Settings
from engine.kafka.security import tls_context, uses_sasl

_MIB = 1024 * 1024


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "id": settings.app_id,
        "broker": settings.broker_url,
        # Per-lead state is rebuilt from the changelog on start; the memory store needs no native library.
        "store": "memory://",
        "datadir": str(settings.state_dir / settings.app_id),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "processing_guarantee": "at_least_once",
        "web_enabled": True,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        # Nudge serves its own /metrics; Faust's stats/graph pages are not needed.
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_tables_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": 1.0,
        "stream_recovery_delay": 0.0,
        "stream_wait_empty": False,
        "table_standby_replicas": 0,
        "worker_redirect_stdouts": False,
        **faust_security(settings),
    }


def faust_security(settings: Settings) -> dict[str, Any]:
    """`broker_credentials` for `faust.App`: the `NUDGE_KAFKA_*` security settings as Faust credentials, which
    Faust's aiokafka driver turns into the same client options as `engine.kafka.security.client_options` for its
    consumer, producer and topic creation. None for `PLAINTEXT`."""
    context = tls_context(settings)
    credentials: CredentialsT | None = None
    if uses_sasl(settings):  # SASL_PLAINTEXT, or SASL_SSL when a TLS context is given
        credentials = SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        credentials = SSLCredentials(context)
    return {"broker_credentials": credentials}


def _kafka_profile() -> dict[str, Any]:
    """A real Kafka cluster: throughput-oriented batching (linger 50 ms, 1 MiB producer batches, 10k records per
    poll, 8 MiB fetches; measured in bench/FINDINGS.md)."""
    return {
        "producer_linger": 0.05,
        "producer_max_batch_size": _MIB,
        "broker_max_poll_records": 10_000,
        "consumer_max_fetch_size": 8 * _MIB,
    }


def _dev_profile() -> dict[str, Any]:
    """The Tansu 0.6.0 broker of the dev stack, the demo and CI. Its bugs, worked around here and nowhere else:

    1. ListOffsets(latest) answers "first offset of the last batch + 1" instead of "last offset + 1", so Faust
       stops changelog recovery early and a restarted worker loses the tail of the last batch. Workaround: one
       record per producer batch (`producer_max_batch_size=1` byte). tests/integration/test_tansu_quirks.py fails
       when a fixed Tansu appears: then delete this workaround.
    2. JoinGroup completes only after session_timeout / 2 (30 s with Faust defaults). Workaround: a 4 s session
       with 1 s heartbeats (a join takes 2 s, a worker is ready 2-3 s after start, and a worker that vanished
       without leaving is replaced after 4 s; the consumer heartbeats from its own thread, so a busy agent does
       not miss them).
    3. A waiting Fetch is answered only when `fetch_max_wait_ms` expires, not when records arrive, and Faust
       hard-codes 1.5 s for its consumers: every hop (event → worker, hand-over → worker) would wait up to 1.5 s.
       Workaround: `install_broker_workarounds()` (no Faust setting exists for it).
    """
    return {
        # Tansu bug 1 (end offsets): one record per producer batch keeps changelog recovery complete.
        "producer_max_batch_size": 1,
        "producer_linger": 0.0,
        # Tansu bug 2 (slow JoinGroup): short sessions and heartbeats make a join take 2 s instead of 30 s.
        "broker_session_timeout": 4.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 4.0,
        "broker_max_poll_records": 10_000,
        "consumer_max_fetch_size": 8 * _MIB,
    }


def _dev_batched_profile() -> dict[str, Any]:
    """`dev` without workaround 1, for runs that never restart a worker or move partitions (the demo, throughput
    benchmarks): there recovery is never needed, and one record per batch would queue changelog writes and
    actions behind each other (seconds of latency on a busy 2-core machine). Recovery would stop early."""
    return {**_dev_profile(), **_kafka_profile(), "producer_linger": 0.005}


PROFILES = {"kafka": _kafka_profile, "dev": _dev_profile, "dev-batched": _dev_batched_profile}
TANSU_FETCH_WAIT_MS = 20


def install_broker_workarounds(settings: Settings) -> None:
    """Tansu bug 3 (see `_dev_profile`), for the dev profiles only; call once before the Faust app starts.

    Faust passes no fetch wait of its own choosing through its settings, so `aiokafka.AIOKafkaConsumer`, which
    Faust's driver looks up when it creates a consumer, is replaced process-wide by a subclass that caps the wait
    at `TANSU_FETCH_WAIT_MS` (about 50 idle fetches a second per consumer; real Kafka answers as soon as data
    arrives and needs nothing; measured in bench/FINDINGS.md). Idempotent; a no-op for the `kafka` profile."""
    if settings.broker_profile not in ("dev", "dev-batched"):
        return
    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    if getattr(driver.aiokafka.AIOKafkaConsumer, "nudge_fetch_wait_capped", False):
        return

    class ShortFetchWaitConsumer(aiokafka.AIOKafkaConsumer):
        nudge_fetch_wait_capped = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = min(kwargs.get("fetch_max_wait_ms", 500), TANSU_FETCH_WAIT_MS)
            super().__init__(*args, **kwargs)

    driver.aiokafka.AIOKafkaConsumer = ShortFetchWaitConsumer  # type: ignore[misc]


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `faust.App` for this deployment: the common settings (memory store rebuilt from the
    changelog, raw serializers, at-least-once) plus the profile named by `settings.broker_profile`: `kafka`
    (default), `dev` or `dev-batched`. Raises KeyError for another name (`Settings` validates it first)."""
    return {**_common(settings), **PROFILES[settings.broker_profile]()}
