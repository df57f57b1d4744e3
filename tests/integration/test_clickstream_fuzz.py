"""A bounded fuzz of the clickstream topic: producers that write straight to Kafka (no collector in front) send bad
records among the good ones of the same leads. Every bad record is dead-lettered with its own reason code (never
the catch-all `worker_error`), and the good records give exactly the actions `nudge simulate` gives for them alone:
no bad record affects another record, of its lead or any other."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.config import Settings
from engine.core.simulate import simulate
from engine.events import format_ts, parse_event
from engine.language import load_rules
from engine.testing import TopicReader
from tests.integration.worker_process import WorkerProcess, cart_abandoned, send, with_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = "rules:\n" + cart_abandoned("{connector: webhook}")
LEADS = 60


def event(lead: str, name: str, at_ms: int, message_id: str) -> bytes:
    return orjson.dumps(
        {"type": "track", "event": name, "userId": lead, "timestamp": format_ts(at_ms), "messageId": message_id}
    )


def bad_records(rng: random.Random, lead: str, now_ms: int) -> list[tuple[bytes | None, bytes]]:
    """Records of `lead` (keyed by it) that no worker may accept; one of each kind."""
    key = lead.encode()
    base: dict[str, Any] = {"type": "track", "event": "Product Added", "userId": lead, "messageId": f"bad-{lead}"}
    deep: Any = {"x": 1}
    for _ in range(40):
        deep = {"d": deep}
    records: list[tuple[bytes | None, bytes]] = [
        (key, b"{not json"),
        (key, b"\xff\xfe\x00garbage"),
        (key, b"[1, 2, 3]"),
        (key, orjson.dumps({**base, "type": "explode", "timestamp": format_ts(now_ms)})),
        (key, orjson.dumps({**base, "properties": deep, "timestamp": format_ts(now_ms)})),
        (key, orjson.dumps({"type": "track", "event": "Product Added", "timestamp": format_ts(now_ms)})),
        (b"someone-else", orjson.dumps({**base, "timestamp": format_ts(now_ms)})),
    ]
    for stamp in ("1e308", -1, 12345, "0001-01-01T00:00:00Z", 10**15, "soon", "2026-13-45T99:99:99Z"):
        value = orjson.dumps({**base, "timestamp": stamp}) if stamp != "1e308" else (
            b'{"type":"track","event":"Product Added","userId":"%s","timestamp":1e308}' % key
        )
        records.append((key, value))
    rng.shuffle(records)
    return records


async def test_bad_records_are_dead_lettered_alone_and_good_ones_fire_as_simulated(
    settings: Settings, tmp_path: Path
) -> None:
    worker_settings = with_rules(settings, tmp_path, RULES)
    rng = random.Random(20261201)
    now = int(time.time() * 1000)
    good: list[tuple[bytes, bytes]] = []
    bad: list[tuple[bytes | None, bytes]] = []
    stream: list[tuple[bytes | None, bytes]] = []
    for n in range(LEADS):
        lead = f"fuzz-{n}"
        mine = [(lead.encode(), event(lead, "Product Added", now + n, f"a-{n}"))]
        if n % 3 == 0:  # a third of them buy inside the window
            mine.append((lead.encode(), event(lead, "Order Completed", now + n + 500, f"o-{n}")))
        junk = bad_records(rng, lead, now + n) if n % 4 == 0 else []
        # The good records keep their order; the bad ones land anywhere among them.
        merged = list(mine)
        for record in junk:
            merged.insert(rng.randint(0, len(merged)), record)
        good.extend(mine)
        bad.extend(junk)
        stream.extend(merged)
    rules = load_rules([worker_settings.rules_path])
    expected = {action.action_id for action in simulate(rules, [parse_event(value) for _, value in good])}

    with WorkerProcess(worker_settings, tmp_path / "worker.log") as worker:
        await worker.start_ready()
        async with TopicReader.from_settings(worker_settings, "actions", "dead-letters") as reader:
            await send(worker_settings, stream)
            await reader.wait_for(
                lambda: len(reader.of("dead-letters")) >= len(bad) and len(reader.of("actions")) >= len(expected),
                timeout_s=40,
                what=f"{len(bad)} dead letters and {len(expected)} actions",
            )
            await reader.wait_for(lambda: time.time() * 1000 > now + 5_000, timeout_s=10, what="anything extra")
        assert worker.alive()

    letters = [record.json() for record in reader.of("dead-letters")]
    reasons = Counter(letter["reason"] for letter in letters)
    assert len(letters) == len(bad), reasons
    assert "worker_error" not in reasons and "evaluation_error" not in reasons, reasons
    assert {"not_json", "bad_timestamp", "too_deep", "wrong_key", "missing_lead_id"} <= set(reasons), reasons
    assert all(letter["source"] == "worker" and letter["detail"] for letter in letters)
    fired = Counter(doc["action_id"] for doc in (r.json() for r in reader.of("actions")))
    assert set(fired) == expected and max(fired.values()) == 1
