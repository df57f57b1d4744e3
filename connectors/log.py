"""`log`: write each action as one JSON line to the logger `nudge.actions` (and optionally stdout), for the demo
and debugging."""

from __future__ import annotations

import logging
import sys

import orjson
from pydantic import Field

from connectors.base import Connector, ConnectorConfig
from engine.core.model import Action
from engine.events import format_ts

logger = logging.getLogger("nudge.actions")


class LogConfig(ConnectorConfig):
    """Options of a `log` connector."""

    type: str = "log"
    stdout: bool = Field(True, description="also print the line to stdout")


def log_line(action: Action) -> str:
    return orjson.dumps(
        {
            "action_id": action.action_id,
            "fired_at": format_ts(action.fired_at_ms),
            "rule": action.rule,
            "lead_id": action.lead_id,
            "connector": action.connector,
            "template": action.template,
            "explanation": action.explanation,
            "payload": action.payload,
        }
    ).decode()


class LogConnector(Connector[str]):
    """Logs (and prints) one line per action; never fails. The line holds id, rule, lead, connector,
    explanation, template and payload, not the whole context (which can hold personal data).
    """

    kind = "log"
    config_model = LogConfig
    config: LogConfig

    def build(self, action: Action) -> str:
        return log_line(action)

    async def transmit(self, message: str) -> None:
        logger.info("%s", message)
        if self.config.stdout:
            print(message, file=sys.stdout, flush=True)
