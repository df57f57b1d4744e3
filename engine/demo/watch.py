"""Live view of the demo: reads `actions`, `deliveries` and `dead-letters` and prints what happens.

Contract: `Watcher` reads the three topics from the beginning with an `engine.testing.TopicReader` (no consumer
group, records not kept), keeps counters (actions per rule, delivery outcomes, dead letters by reason, detection
delays) and the next offset per partition it has read (`ends`: so the demo can tell when the sink has caught up
with everything that was produced). It prints one line per fired action, at most `max_lines_per_s` a second (the
rest are only counted, and the periodic progress line shows the totals). `print` is injectable for tests.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable

import orjson

from engine.events import format_ts
from engine.testing import TopicReader, TopicRecord


class Watcher:
    """Consumes the output topics in the background; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],  # role ("actions", "deliveries", "dead-letters") -> topic name
        out: Callable[[str], None] = print,
        max_lines_per_s: float = 4.0,
    ) -> None:
        self.topics = topics
        self.roles = {name: role for role, name in topics.items()}
        self.out = out
        self.max_lines_per_s = max_lines_per_s
        self.actions: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.delays_ms: list[int] = []
        self.last_action_at = 0.0
        self.started = time.monotonic()
        self._printed: list[float] = []
        self._unprinted = 0
        self._reader = TopicReader(
            bootstrap, topics.values(), on_record=self._handle, keep=False, max_records=2000, metadata_max_age_ms=1000
        )

    @property
    def ends(self) -> dict[tuple[str, int], int]:
        """The offset after the last record read, per (topic, partition)."""
        return self._reader.ends

    async def start(self) -> None:
        await self._reader.start()

    async def stop(self) -> None:
        await self._reader.stop()

    def _handle(self, record: TopicRecord) -> None:
        role = self.roles.get(record.topic, "")
        try:
            doc = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return
        if role == "actions":
            self._on_action(doc)
        elif role == "deliveries":
            self.outcomes[doc.get("outcome", "?")] += 1
        elif role == "dead-letters":
            self.dead_letters[doc.get("reason", "?")] += 1
            self._line(f"  ✗ dead letter  {doc.get('reason')}: {str(doc.get('detail', ''))[:70]}")

    def _on_action(self, doc: dict) -> None:
        now_ms = int(time.time() * 1000)
        self.actions[doc["rule"]] += 1
        self.last_action_at = time.monotonic()
        due_ms = max(doc.get("fired_at_ms") or 0, doc.get("trigger_time_ms") or 0)
        delay_ms = now_ms - due_ms
        self.delays_ms.append(delay_ms)
        self._line(
            f"  ⚡ {format_ts(doc['fired_at_ms'])[11:19]}  {doc['rule']:<26} {doc['lead_id']:<38.38} "
            f"via {doc['connector']:<8} detected {delay_ms / 1000:5.2f} s after due"
        )

    def _line(self, text: str) -> None:
        now = time.monotonic()
        self._printed = [t for t in self._printed if now - t < 1.0]
        if len(self._printed) >= self.max_lines_per_s:
            self._unprinted += 1
            return
        self._printed.append(now)
        self.out(text)

    def progress(self, sent: int, total: int) -> str:
        rules = ", ".join(f"{rule} {n}" for rule, n in sorted(self.actions.items()))
        delivered = self.outcomes.get("sent", 0)
        median = f"{statistics.median(self.delays_ms) / 1000:.2f} s" if self.delays_ms else "-"
        return (
            f"[{time.monotonic() - self.started:5.1f} s] events {sent:,}/{total:,} · actions "
            f"{sum(self.actions.values()):,} ({rules or 'none yet'}) · delivered {delivered:,} · "
            f"dead letters {sum(self.dead_letters.values())} · median detection {median}"
        )
