"""Connector types by name: `type: webhook` in the connectors file → `connectors.webhook.WebhookConnector`.
Imports are lazy so loading the file does not import every client library."""

from __future__ import annotations

import importlib
from typing import Any

from connectors.base import Connector

_TYPES = {
    "webhook": ("connectors.webhook", "WebhookConnector"),
    "slack": ("connectors.slack", "SlackConnector"),
    "email": ("connectors.email", "EmailConnector"),
    "kafka": ("connectors.kafka", "KafkaConnector"),
    "redis": ("connectors.redis_stream", "RedisStreamConnector"),
    "crm": ("connectors.crm", "CrmConnector"),
    "log": ("connectors.log", "LogConnector"),
}


def known_types() -> tuple[str, ...]:
    return tuple(_TYPES)


def connector_class(kind: str) -> type[Connector[Any]]:
    module, name = _TYPES[kind]
    found: type[Connector[Any]] = getattr(importlib.import_module(module), name)
    return found
