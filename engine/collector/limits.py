"""Rate limits at the edge: token buckets per write key and per client address, kept in this collector's memory.

In-process, not in Redis: a flood must be refused before it costs Redis anything, and a refusal must cost no
network round trip. The price is that the limits hold per collector: behind a load balancer spreading one client
over N collectors it may send up to N times the rate (docs/collector.md, "Limits").
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Mapping

from engine.collector.errors import RequestRejected

MAX_ADDRESSES = 100_000  # buckets kept for client addresses before idle ones are forgotten


class TokenBuckets:
    """One token bucket per name: `burst` tokens at most, refilled at `rate` tokens per second (`rate <= 0`: no
    limit). Not thread-safe (one event loop). At most `max_names` buckets are kept: past that, buckets that have
    refilled completely (a new bucket would be the same) are forgotten first, then the oldest."""

    def __init__(self, rate: float, burst: int, *, max_names: int = MAX_ADDRESSES) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_names = max_names
        self._buckets: dict[str, list[float]] = {}  # name -> [tokens, at]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, name: str, now: float) -> float:
        bucket = self._buckets.get(name)
        if bucket is None:
            return float(self.burst)
        return min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)

    def wait_s(self, name: str, cost: float, now: float) -> float:
        """Seconds until `cost` tokens are there (0: now). A cost above `burst` counts as `burst`, so the largest
        allowed request can always pass a full bucket."""
        missing = min(cost, self.burst) - self._level(name, now)
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, name: str, cost: float, now: float) -> None:
        self._buckets[name] = [self._level(name, now) - min(cost, self.burst), now]
        if len(self._buckets) > self.max_names:
            self._forget(now)

    def _forget(self, now: float) -> None:
        full = [name for name in self._buckets if self._level(name, now) >= self.burst]
        for name in full:
            del self._buckets[name]
        while len(self._buckets) > self.max_names * 0.9:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimiter:
    """Admits or refuses work by write key and by client address; refusals are `429 rate_limited` with
    `Retry-After` (whole seconds, at least 1), which every Segment SDK honours before retrying.

    `admit(key, address, key_cost, address_cost)` is all or nothing: the tokens are taken from both buckets, or
    from neither and `RequestRejected(429)` is raised. The collector charges one token per event (at least one per
    request) to the write key's bucket, and the same to the address's bucket for browser-key and not yet
    authenticated requests; server-key requests (a back end sending for many users from one address) are
    limited by their key only.
    """

    def __init__(
        self,
        key_rate: float,
        key_burst: int,
        address_rate: float,
        address_burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.keys = TokenBuckets(key_rate, key_burst)
        self.addresses = TokenBuckets(address_rate, address_burst, max_names=max_addresses)
        self._clock = clock

    def admit(self, key: str | None, address: str | None, key_cost: float, address_cost: float) -> None:
        now = self._clock()
        checks: list[tuple[str, TokenBuckets, str, float]] = []
        if key is not None and self.keys.enabled and key_cost > 0:
            checks.append(("write key", self.keys, key, key_cost))
        if address is not None and self.addresses.enabled and address_cost > 0:
            checks.append(("client address", self.addresses, address, address_cost))
        waits = {scope: buckets.wait_s(name, cost, now) for scope, buckets, name, cost in checks}
        limited = {scope: wait for scope, wait in waits.items() if wait > 0}
        if limited:
            scope = max(limited, key=lambda s: limited[s])
            raise RequestRejected(
                429,
                "rate_limited",
                f"too many events from this {scope}; retry after the Retry-After delay (limits: "
                "docs/collector.md)",
                retry_after_s=max(1, math.ceil(limited[scope])),
            )
        for _, buckets, name, cost in checks:
            buckets.take(name, cost, now)


def client_address(peer: str | None, headers: Mapping[str, str], forwarded_hops: int) -> str | None:
    """The address a rate limit applies to: the TCP peer, or with `forwarded_hops` = N > 0 (N proxies of yours in
    front of the collector, each appending to `X-Forwarded-For`) the N-th address from the right of that header
    (the ones further left are whatever the client claims). IPv6 addresses count by their /64 network (one
    subscriber's allocation); IPv4-mapped ones as IPv4. None when there is none to use."""
    address = peer
    if forwarded_hops > 0:
        hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if len(hops) >= forwarded_hops:
            address = hops[-forwarded_hops]
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # e.g. a Unix socket peer: one name for all of it
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
