"""Generate the bundled sample clickstream: a seeded, synthetic web-store session log in Segment spec.

    python examples/generate_clickstream.py [--leads 3000] [--seed 7] [--out examples/clickstream.jsonl.gz]

Contract: the same seed and arguments always write the same bytes (gzipped, one JSON event per line, by
timestamp). Timestamps are time-compressed: the whole log spans about a minute from `BASE_TIME`, with seconds
between a visitor's steps instead of minutes, so the demo rules in `examples/rules/` (10-second-scale windows)
see carts abandoned and checkouts dropped while the demo runs. `nudge demo` shifts timestamps to "now".

Visitors (each a lead): browsers who only look, shoppers who add to cart and leave, shoppers who buy, shoppers
who start checkout and leave, and B2B visitors who keep coming back to the pricing page. Some cart abandoners come
back and buy after the cart reminder would have fired, with a real causal effect of the reminder: 8 % of the
shoppers the cart rule's experiment holds out (no reminder), 12 % of the others. The generator knows who is held
out by the experiment's own assignment formula (docs/experiments.md), so the demo can measure the uplift. Most
are identified (`userId`, with an `identify` carrying traits); some stay anonymous (`anonymousId`). A few deliberately
malformed lines (not JSON, no lead id, bad timestamp) show the dead-letter path.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BASE_TIME = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
SPAN_S = 60.0  # arrivals are spread over this many seconds

PRODUCTS = [
    ("sku-1001", "Trail Running Shoes", 129.0, "shoes"),
    ("sku-1002", "Merino Hiking Socks", 19.5, "socks"),
    ("sku-1003", "Rain Shell Jacket", 189.0, "jackets"),
    ("sku-1004", "Insulated Water Bottle", 34.0, "accessories"),
    ("sku-1005", "Headlamp 400lm", 49.0, "accessories"),
    ("sku-1006", "Ultralight Tent 2P", 429.0, "tents"),
    ("sku-1007", "Down Sleeping Bag", 319.0, "sleeping"),
    ("sku-1008", "Trekking Poles", 89.0, "accessories"),
]
PAGES = [("Home", "/"), ("Category", "/c/outdoor"), ("Sale", "/sale"), ("Blog", "/blog/packing-list")]
FIRST_NAMES = ["Ada", "Ben", "Chloe", "Dev", "Ema", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lena", "Mo"]
LAST_NAMES = ["Novak", "Okafor", "Petit", "Quinn", "Rossi", "Sato", "Tanaka", "Ueda", "Varga", "Weiss"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
]
# Share of visitors per behaviour; the rest only browse.
BEHAVIOURS = [("abandon_cart", 0.28), ("buy", 0.17), ("abandon_checkout", 0.10), ("pricing", 0.08)]

# The cart reminder's experiment (examples/rules/ecommerce.yaml, cart_abandoned: `experiment: {holdout: 20%}`, id =
# the rule id) and the ground truth of its effect: the share of cart abandoners who come back and buy, by arm.
CART_EXPERIMENT = "cart_abandoned"
CART_HOLDOUT = 0.20
CART_REMINDER_S = 10.0  # the demo rule's `within: 10s`: they come back after the reminder would have fired
COMEBACK_RATE = {"holdout": 0.08, "treatment": 0.12}


def experiment_arm(experiment_id: str, lead_id: str, holdout: float) -> str:
    """The experiment's assignment formula (engine.core.experiments.assign_arm, without variants)."""
    u = int.from_bytes(hashlib.sha256(f"{experiment_id}:{lead_id}".encode()).digest()[:8], "big") / 2**64
    return "holdout" if u < holdout else "treatment"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Visitor:
    """One lead's session: emits events at increasing times with think-time gaps of a few seconds."""

    def __init__(self, rng: random.Random, n: int, start_ms: int) -> None:
        self.rng = rng
        self.t = start_ms
        self.identified = rng.random() < 0.8
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        self.user_id = f"u{n:05d}" if self.identified else None
        self.anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.email = f"{first.lower()}.{last.lower()}{n}@example.com"
        self.name = f"{first} {last}"
        self.agent = rng.choice(AGENTS)
        self.ip = f"203.0.113.{rng.randint(1, 254)}"
        self.cart_id = f"cart-{n:05d}"
        self.cart: list[tuple[str, str, float, str]] = []

    def step(self, low: float = 0.3, high: float = 2.5) -> None:
        self.t += int(self.rng.uniform(low, high) * 1000)

    def _base(self, kind: str, path: str = "/") -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": kind,
            "messageId": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "timestamp": iso(self.t),
            "anonymousId": self.anonymous_id,
            "context": {
                "ip": self.ip,
                "userAgent": self.agent,
                "page": {"path": path, "url": f"https://shop.example.com{path}"},
                "library": {"name": "analytics.js", "version": "5.2.0"},
            },
        }
        if self.user_id:
            doc["userId"] = self.user_id
        return doc

    def page(self, name: str, path: str) -> dict[str, Any]:
        doc = self._base("page", path)
        doc["name"] = name
        doc["properties"] = {"path": path, "title": f"{name} | Summit Outfitters"}
        return doc

    def identify(self) -> dict[str, Any]:
        doc = self._base("identify")
        consent = self.rng.random() < 0.85
        doc["traits"] = {"email": self.email, "name": self.name, "marketing_consent": consent}
        return doc

    def track(self, event: str, properties: dict[str, Any], path: str = "/") -> dict[str, Any]:
        doc = self._base("track", path)
        doc["event"] = event
        doc["properties"] = properties
        return doc

    def product(self, product: tuple[str, str, float, str]) -> dict[str, Any]:
        sku, name, price, category = product
        return {
            "product_id": sku, "sku": sku, "name": name, "price": price, "category": category,
            "currency": "USD",
        }

    def cart_total(self) -> float:
        return round(sum(p[2] for p in self.cart), 2)


def comeback(visitor: Visitor, n: int, seed: int) -> Iterator[dict[str, Any]]:
    """A cart abandoner who comes back and buys after the reminder would have fired (8 % held out, 12 % reminded).
    Draws from its own seeded generator, so the rest of the sample is the same with or without comebacks."""
    rng = random.Random(f"comeback:{seed}:{n}")
    arm = experiment_arm(CART_EXPERIMENT, visitor.user_id or visitor.anonymous_id, CART_HOLDOUT)
    if rng.random() >= COMEBACK_RATE[arm]:
        return
    visitor.rng = rng
    visitor.step(CART_REMINDER_S + 3.0, CART_REMINDER_S + 15.0)
    yield visitor.page("Cart", "/cart")
    visitor.step()
    products = [{"product_id": p[0], "price": p[2], "quantity": 1} for p in visitor.cart]
    order_id = f"ord-{n:05d}"
    yield visitor.track(
        "Checkout Started",
        {"order_id": order_id, "value": visitor.cart_total(), "currency": "USD", "products": products},
        "/checkout",
    )
    visitor.step(1.0, 4.0)
    yield visitor.track(
        "Order Completed",
        {"order_id": order_id, "revenue": visitor.cart_total(), "currency": "USD", "products": products},
        "/checkout/done",
    )


def session(rng: random.Random, n: int, comeback_seed: int | None = None) -> Iterator[dict[str, Any]]:
    """One visitor's events. With `comeback_seed`, some cart abandoners come back and buy (`comeback`); without
    it (bench/workload.py), the session is exactly what it always was."""
    visitor = Visitor(rng, n, int(BASE_TIME.timestamp() * 1000) + int(rng.uniform(0, SPAN_S) * 1000))
    roll, behaviour = rng.random(), "browse"
    for name, share in BEHAVIOURS:
        if roll < share:
            behaviour = name
            break
        roll -= share
    yield visitor.page(*rng.choice(PAGES))
    if visitor.identified:
        visitor.step(0.1, 0.5)
        yield visitor.identify()
    if behaviour == "pricing":
        for _ in range(rng.randint(3, 4)):
            visitor.step(1.0, 4.0)
            yield visitor.page("Pricing", "/pricing")
        return
    for _ in range(rng.randint(1, 4)):
        visitor.step()
        product = rng.choice(PRODUCTS)
        yield visitor.track("Product Viewed", visitor.product(product), f"/p/{product[0]}")
    if behaviour == "browse":
        return
    for product in rng.sample(PRODUCTS, rng.randint(1, 3)):
        visitor.step()
        visitor.cart.append(product)
        yield visitor.track(
            "Product Added", {**visitor.product(product), "quantity": 1, "cart_id": visitor.cart_id}, "/cart"
        )
    if behaviour == "abandon_cart":
        if comeback_seed is not None:
            yield from comeback(visitor, n, comeback_seed)
        return
    visitor.step()
    products = [{"product_id": p[0], "price": p[2], "quantity": 1} for p in visitor.cart]
    order_id = f"ord-{n:05d}"
    yield visitor.track(
        "Checkout Started",
        {"order_id": order_id, "value": visitor.cart_total(), "currency": "USD", "products": products},
        "/checkout",
    )
    if behaviour == "abandon_checkout":
        return
    visitor.step(1.0, 4.0)
    yield visitor.track(
        "Order Completed",
        {"order_id": order_id, "revenue": visitor.cart_total(), "currency": "USD", "products": products},
        "/checkout/done",
    )


def malformed(rng: random.Random, count: int) -> Iterator[tuple[int, bytes]]:
    """(time, raw line) pairs that the worker must dead-letter, never crash on."""
    base = int(BASE_TIME.timestamp() * 1000)
    shapes = [
        lambda t: b"{this is not json",
        # no lead id
        lambda t: orjson.dumps({"type": "track", "event": "Product Viewed", "timestamp": iso(t)}),
        # a timestamp that is not ISO-8601
        lambda t: orjson.dumps({"type": "track", "event": "Viewed", "userId": "u-bad", "timestamp": "soon"}),
    ]
    for i in range(count):
        t = base + int(rng.uniform(0, SPAN_S) * 1000)
        yield t, shapes[i % len(shapes)](t)


def generate(leads: int, seed: int, malformed_count: int = 12) -> list[bytes]:
    rng = random.Random(seed)
    timed: list[tuple[int, int, bytes]] = []
    for n in range(leads):
        for doc in session(rng, n, comeback_seed=seed):
            at_ms = int(datetime.fromisoformat(doc["timestamp"]).timestamp() * 1000)
            timed.append((at_ms, len(timed), orjson.dumps(doc)))
    for t, raw in malformed(rng, malformed_count):
        timed.append((t, len(timed), raw))
    timed.sort()
    return [raw for _, _, raw in timed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "clickstream.jsonl.gz")
    args = parser.parse_args(argv)
    lines = generate(args.leads, args.seed)
    body = b"\n".join(lines) + b"\n"
    # mtime=0: the same seed gives byte-identical files, so regenerating never shows up as a change.
    args.out.write_bytes(gzip.compress(body, mtime=0) if args.out.suffix == ".gz" else body)
    print(f"wrote {len(lines)} events for {args.leads} leads to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
