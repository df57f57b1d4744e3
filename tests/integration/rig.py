"""A `nudge worker` and a `nudge dispatch` driven together through Kafka, for the acceptance tests of what goes
from a clickstream event to a delivery (experiments, journeys), and the connector YAML those tests share.

- `WorkerAndDispatcher(settings, tmp_path, connectors_yaml, topics)`: `async with` creates `topics`, writes the
  connectors file, starts both subprocesses (the dispatcher with that file and no /metrics), returns once the
  worker is ready and the dispatcher's actions consumer has joined, with `out` reading actions, deliveries and
  lead-updates from the start; on exit (whatever happened) stops the reader and both processes.
- `email_connector_yaml(smtp_port, collector_url)`: the `email` connector of a test SMTP peer, with one-click
  unsubscribe links to the collector.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from engine.config import Settings
from engine.devstack import free_port
from engine.kafka.admin import ensure_topics
from engine.testing import ChildProcess, TopicReader
from tests.integration.worker_process import WorkerProcess

READS = ("actions", "deliveries", "lead-updates")


class WorkerAndDispatcher:
    """See the module docstring."""

    def __init__(
        self, settings: Settings, tmp_path: Path, connectors_yaml: str, topics: Sequence[str],
        reads: Sequence[str] = READS,
    ) -> None:
        connectors = tmp_path / "connectors.yaml"
        connectors.write_text(connectors_yaml)
        dispatch_env = {**os.environ, **settings.with_(connectors_path=connectors, web_port=free_port()).env()}
        self.settings = settings
        self.topics = tuple(topics)
        self.dispatcher = ChildProcess.nudge(
            "nudge dispatch", ["dispatch", "--metrics-port", "0"], dispatch_env, tmp_path / "dispatch.log"
        )
        self.worker = WorkerProcess(settings, tmp_path / "worker.log")
        self.out = TopicReader.from_settings(settings, *reads)
        self._reading = False

    async def __aenter__(self) -> WorkerAndDispatcher:
        try:
            await ensure_topics(self.settings, self.topics)
            self.worker.start()
            self.dispatcher.start()
            await self.worker.wait_ready()
            # its actions consumer has joined (on Tansu that takes half a session after the lead-updates catch-up)
            await self.dispatcher.wait_for_log("dispatcher assigned", timeout_s=30)
            await self.out.start()
            self._reading = True
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._reading:
                self._reading = False
                await self.out.stop()
        finally:
            self.worker.__exit__()
            self.dispatcher.stop()


def email_connector_yaml(smtp_port: int, collector_url: str) -> str:
    """The `email` connector entry (indented for `connectors:`) of an SMTP peer on loopback."""
    return f"""\
  email:
    type: email
    host: 127.0.0.1
    port: {smtp_port}
    security: none
    from: "Shop <shop@example.com>"
    site_url: https://shop.example
    unsubscribe_base_url: {collector_url}
    unsubscribe_secret: ${{NUDGE_UNSUBSCRIBE_SECRET}}
"""
