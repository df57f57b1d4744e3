"""KPIs computed in plain Python from the generated stream, independently of ClickHouse."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from engine.events import parse_ts
from tests.clickhouse.streamgen import ADD, CHECKOUT, ORDER, VIEW, Stream

DAY = 24 * 3600 * 1000


def quantile_exact(values: list[int], q: float) -> int:
    """ClickHouse `quantileExact`: the element at position floor(q * n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _by_lead(stream: Stream) -> dict[str, list[tuple[int, str, dict[str, Any]]]]:
    leads: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for e in stream.events:
        leads[e["userId"]].append((parse_ts(e["timestamp"]), e["event"], e))
    for events in leads.values():
        events.sort(key=lambda x: x[0])
    return leads


def funnel(stream: Stream) -> list[int]:
    steps = (VIEW, ADD, CHECKOUT, ORDER)
    counts = [0, 0, 0, 0]
    for events in _by_lead(stream).values():
        level = 0
        for _, name, _ in events:  # greedy earliest match is the longest ordered prefix
            if level < 4 and name == steps[level]:
                level += 1
        for k in range(level):
            counts[k] += 1
    return counts


def abandonment(stream: Stream) -> tuple[int, int]:
    carts = abandoned = 0
    for events in _by_lead(stream).values():
        adds = [t for t, name, _ in events if name == ADD]
        orders = [t for t, name, _ in events if name == ORDER]
        if adds:
            carts += 1
            if not orders or max(orders) < max(adds):
                abandoned += 1
    return carts, abandoned


def recovered(stream: Stream, since_ms: int, until_ms: int, attribution_ms: int = 7 * DAY) -> tuple[int, float]:
    """Orders in the window, each credited when a marketing nudge to the lead was *sent* (its first `sent`
    delivery) before it and at most `attribution_ms` before it."""
    marketing = {a.action_id: a for a, _ in stream.actions if a.marketing}
    first_sent: dict[str, int] = {}
    for d in stream.deliveries:
        if d["outcome"] == "sent" and d["action_id"] in marketing:
            first_sent[d["action_id"]] = min(first_sent.get(d["action_id"], d["at_ms"]), d["at_ms"])
    sends: dict[str, list[int]] = defaultdict(list)
    for action_id, sent_at in first_sent.items():
        sends[marketing[action_id].lead_id].append(sent_at)
    orders = revenue = 0
    for lead, events in _by_lead(stream).items():
        for t, name, e in events:
            if name != ORDER or not since_ms <= t < until_ms:
                continue
            if any(s < t <= s + attribution_ms for s in sends.get(lead, ())):
                props = e["properties"]
                orders += 1
                revenue += props.get("revenue", props.get("total", 0))
    return orders, round(revenue, 2)


def not_sent(stream: Stream) -> dict[tuple[str, str, str], int]:
    """(rule, outcome, reason) → actions whose delivery ended suppressed or failed (each action has one outcome
    in the generated stream)."""
    rule_of = {a.action_id: a.rule for a, _ in stream.actions}
    out: dict[tuple[str, str, str], int] = defaultdict(int)
    for d in stream.deliveries:
        if d["outcome"] in ("suppressed", "failed"):
            out[(rule_of[d["action_id"]], d["outcome"], d["reason"])] += 1
    return dict(out)


def detection_delays(stream: Stream) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for action, emitted in stream.actions:
        out[action.rule].append(emitted - max(action.fired_at_ms, action.trigger_time_ms or 0))
    return out


def delivery_delays(stream: Stream) -> dict[str, list[int]]:
    emitted = {a.action_id: t for a, t in stream.actions}
    out: dict[str, list[int]] = defaultdict(list)
    for d in stream.deliveries:
        if d["outcome"] == "sent":
            out[d["connector"]].append(d["at_ms"] - emitted[d["action_id"]])
    return out


def hot_leads(stream: Stream) -> dict[str, dict[str, Any]]:
    acks: dict[str, int] = {}
    owners: dict[str, tuple[int, str]] = {}
    for u in stream.lead_updates:
        touch = u["at_ms"] if u["kind"] == "ack" else u.get("acked_at_ms")
        if touch:
            acks[u["lead_id"]] = min(acks.get(u["lead_id"], touch), touch)
        if u["kind"] in ("assigned", "reassigned"):
            owners[u["lead_id"]] = max(owners.get(u["lead_id"], (0, "")), (u["at_ms"], u["rep"]["id"]))
    per_rep: dict[str, dict[str, Any]] = {}
    for action, _ in stream.actions:
        if action.marketing:
            continue
        owner = action.context.get("owner") or {}
        rep = owner.get("id") or owners.get(action.lead_id, (0, ""))[1] or "(unassigned)"
        entry = per_rep.setdefault(rep, {"hot_leads": 0, "ttft": []})
        entry["hot_leads"] += 1
        touch = acks.get(action.lead_id)
        if touch is not None and touch >= action.fired_at_ms:
            entry["ttft"].append(touch - action.fired_at_ms)
    return per_rep
