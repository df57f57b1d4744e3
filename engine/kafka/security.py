"""How every Kafka client of Nudge authenticates and encrypts: the `NUDGE_KAFKA_*` security settings as aiokafka
keyword arguments, in one place.

Every `AIOKafkaProducer`, `AIOKafkaConsumer` and `AIOKafkaAdminClient` Nudge builds takes `**client_options(settings)`
(tests/kafka/test_security.py finds any that does not); the Faust worker gets the same settings as Faust credentials
(`engine.worker.faust_ext.broker_profiles`), built from `tls_context` here.
"""

from __future__ import annotations

import ssl
from typing import Any

from engine.config import ConfigError, Settings


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for `SSL` / `SASL_SSL` (None otherwise): the broker's certificate and host name are always
    verified, against `NUDGE_KAFKA_CA_FILE` when set, else the system's CA store. Raises `ConfigError` (naming the
    variable) when the CA file cannot be loaded."""
    if not uses_tls(settings):
        return None
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"NUDGE_KAFKA_CA_FILE={settings.kafka_ca_file!r} cannot be loaded as PEM certificates: {exc}"
        ) from None


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin), to pass as `**client_options(settings)`
    next to `bootstrap_servers`: `security_protocol`, plus `ssl_context` for TLS and the SASL mechanism, user and
    password for SASL. `PLAINTEXT` (the default) gives `{"security_protocol": "PLAINTEXT"}`, aiokafka's own default.

    The settings were validated when they were built (`Settings` raises `ConfigError` for a SASL protocol without
    credentials, a CA file without TLS, ...). The returned dict holds the password: never log it."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = tls_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if uses_sasl(settings):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options
