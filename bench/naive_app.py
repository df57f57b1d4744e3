"""`python -m bench.naive_app`: measurement (2), the Faust agent a Faust user would write first.

One `async for` over the clickstream, the event decoded with `json`, two table writes per event (a per-lead
counter and a per-lead last-seen record, JSON-encoded by Faust; the baseline issue 9 describes), Faust's default
settings. Only what the broker and the
measurement need is set: memory store, reading from the earliest offset, log level info, and the Tansu
group-session workaround (without it a join takes 30 s; it does not change processing). With
BENCH_NAIVE_TUNED=1 it instead takes the Nudge worker's Faust settings and broker profile (producer batching,
10k-record polls, ...), which shows how much of the worker's lead is configuration and how much design.

Environment: the NUDGE_* variables of the run (broker, topic prefix, partitions, state dir, web port) plus
BENCH_APP_ID (its own consumer group), BENCH_STATUS (a file), BENCH_CLICKSTREAM_TOPIC (the shared backlog; default
the prefixed clickstream) and BENCH_NAIVE_WRITES (2; 1 for the variant that folds the counter into the last-seen
record). The agent writes {count, t, cpu_s} to BENCH_STATUS at most every 0.2 s (t: time.monotonic(), cpu_s:
its own process time, both taken when count was), so the harness reads the agent's own counters at a window's
edges.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    from bench import profiles

    profiles.apply(os.environ.get("BENCH_BROKER_PROFILE", "dev"))
    import faust

    from engine.config import Settings
    from engine.worker.faust_ext.broker_profiles import faust_security, faust_settings

    settings = Settings.from_env().with_(app_id=os.environ["BENCH_APP_ID"])
    writes = int(os.environ.get("BENCH_NAIVE_WRITES", "2"))
    status_path = Path(os.environ["BENCH_STATUS"])
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("BENCH_NAIVE_TUNED") == "1":
        options = faust_settings(settings)
        options.pop("key_serializer")
        options.pop("value_serializer")
    else:
        options = {
            "id": settings.app_id,
            "broker": settings.broker_url,
            "store": "memory://",
            "datadir": str(settings.state_dir / settings.app_id),
            "topic_partitions": settings.partitions,
            "web_port": settings.web_port,
            "consumer_auto_offset_reset": "earliest",
            # Tansu's slow JoinGroup (dev-stack.md, bug 2): joins only, not processing.
            "broker_session_timeout": 10.0,
            "broker_heartbeat_interval": 1.0,
            "broker_rebalance_timeout": 10.0,
            **faust_security(settings),
        }
    app = faust.App(**options)
    clickstream = app.topic(
        os.environ.get("BENCH_CLICKSTREAM_TOPIC") or settings.topic("clickstream"),
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
    )
    counts = app.Table("naive-counts", default=int, partitions=settings.partitions)
    last_seen = app.Table("naive-last-seen", default=dict, partitions=settings.partitions)
    progress = {"count": 0, "reported": 0.0}

    def report(now: float) -> None:
        progress["reported"] = now
        status = {"count": progress["count"], "t": now, "cpu_s": time.process_time()}
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(status_path)

    @app.agent(clickstream)
    async def count_events(stream: faust.StreamT) -> None:
        async for event in stream:
            progress["count"] += 1
            try:
                doc = json.loads(event)
                lead = doc.get("userId") or doc.get("anonymousId")
            except (ValueError, AttributeError):
                lead = None
            if lead:
                seen = {"event": doc.get("event") or doc.get("type"), "at": doc.get("timestamp")}
                if writes == 1:  # the lighter variant: the count folded into the one record
                    last_seen[lead] = {**seen, "count": last_seen[lead].get("count", 0) + 1}
                else:
                    counts[lead] += 1
                    last_seen[lead] = seen
            now = time.monotonic()
            if now - progress["reported"] >= 0.2:
                report(now)

    worker = faust.Worker(app, loglevel="INFO", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
