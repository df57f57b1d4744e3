"""Hypothesis strategies: Segment-spec event streams in the shipped rule pack's vocabulary."""

from __future__ import annotations

import uuid
import zlib
from typing import Any

from hypothesis import strategies as st

from engine.events import Event, parse_event

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000

TRACK_NAMES = (
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Checkout Started",
    "Order Completed",
    "Order Refunded",
    "Signed Up",
    "Email Opened",
    "Demo Requested",
    "Unsubscribed",
)
PAGES = ("/pricing", "/pricing/teams", "/docs/start", "/", "/blog/x")


@st.composite
def raw_event(draw: st.DrawFn, lead: str, index: int, ts: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(("track", "track", "page", "identify")))
    message_id = str(uuid.UUID(int=(zlib.crc32(lead.encode()) << 64) + index))  # realistic 36-char ids
    doc: dict[str, Any] = {"type": kind, "userId": lead, "messageId": message_id, "timestamp": ts}
    if kind == "track":
        doc["event"] = draw(st.sampled_from(TRACK_NAMES))
        doc["properties"] = {
            "product_id": draw(st.sampled_from(("p1", "p2", "p3"))),
            "name": "Thing",
            "price": draw(st.sampled_from((5, 19.99, 120))),
            "quantity": draw(st.integers(1, 3)),
        }
    elif kind == "page":
        doc["properties"] = {"path": draw(st.sampled_from(PAGES))}
        doc["name"] = "Page"
    else:
        doc["traits"] = {
            "email": f"{lead}@example.com",
            "plan": draw(st.sampled_from(("free", "pro"))),
            "name": draw(st.text(max_size=30)),
        }
    return doc


@st.composite
def lead_stream(draw: st.DrawFn, lead: str, max_size: int = 25, max_gap_min: int = 40) -> list[Event]:
    """One lead's events in input order; timestamps mostly increase, sometimes tie, sometimes go back."""
    n = draw(st.integers(0, max_size))
    ts = BASE + draw(st.integers(0, 60)) * MINUTE
    events = []
    for i in range(n):
        ts += (
            draw(st.sampled_from((0, 1, 2, 5, 10, 30))) * MINUTE
            if draw(st.booleans())
            else draw(st.integers(-3, max_gap_min)) * MINUTE
        )
        events.append(parse_event(draw(raw_event(lead, i, ts))))
    return events


@st.composite
def multi_lead_streams(draw: st.DrawFn, leads: int = 4) -> dict[str, list[Event]]:
    return {f"lead{i}": draw(lead_stream(f"lead{i}")) for i in range(leads)}


@st.composite
def interleavings(draw: st.DrawFn, per_lead: dict[str, list[Event]]) -> list[Event]:
    """One merge of the per-lead streams that keeps each lead's own order."""
    labels = [lead for lead, events in per_lead.items() for _ in events]
    order = draw(st.permutations(labels))
    cursors = dict.fromkeys(per_lead, 0)
    merged = []
    for lead in order:
        merged.append(per_lead[lead][cursors[lead]])
        cursors[lead] += 1
    return merged
