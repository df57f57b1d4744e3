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


def test_kpis_count_a_merged_lead_once(settings: Settings) -> None:
    """An anonymous visitor views and adds to cart, then signs in and completes the order as a user: one lead
    through the whole funnel, not an abandoned anonymous cart plus a user who ordered without a cart."""
    from engine.clickhouse import kpis

    client = connect(settings.clickhouse_dsn)
    try:
        migrate(client)
        steps = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
        docs = [event(f"a{n}", anonymousId="anon-8", event=name) for n, name in enumerate(steps[:2])]
        docs.append(event("i", type="identify", userId="user-8", anonymousId="anon-8"))
        docs += [event(f"u{n}", userId="user-8", event=name) for n, name in enumerate(steps[2:])]
        for n, doc in enumerate(docs):
            doc["timestamp"] += n * 1000
        insert(client, "clickstream", docs)
        since, until = kpis.window("1d")
        assert [step["leads"] for step in kpis.funnel(client, since, until)] == [1, 1, 1, 1]
        assert kpis.abandonment(client, since, until) == {"carts": 1, "abandoned": 0, "rate": 0.0}
    finally:
        client.close()
