"""One person, one history: `nudge leads show` lists the events and actions of every id merged into the lead (an
identified user's cart reminder next to the anonymous add-to-cart that caused it)."""

from __future__ import annotations

from engine.clickhouse.client import connect
from engine.clickhouse.migrations import migrate
from engine.commands.leads import gather, render
from engine.config import Settings
from tests.privacy.test_clickhouse_erasure import action, event, insert


def test_leads_show_merges_the_anonymous_history(settings: Settings) -> None:
    client = connect(settings.clickhouse_dsn)
    try:
        migrate(client)
        insert(client, "clickstream", [
            event("m1", anonymousId="anon-7", event="Product Added"),
            event("m2", type="identify", userId="user-7", anonymousId="anon-7"),
            event("m3", userId="other-7", event="Product Added"),
        ])  # fmt: skip
        insert(client, "actions", [action("user-7", 1)])
    finally:
        client.close()
    report = gather(settings, "user-7")
    assert report.merged_ids == ["anon-7"]
    assert sorted(e["name"] for e in report.events) == ["", "Product Added"]  # the anonymous add-to-cart is there
    assert [a["action_id"] for a in report.actions] == ["act-user-7-1"]
    assert "Lead user-7 (merged: anon-7)" in render(report)
