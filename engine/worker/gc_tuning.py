"""Python's cyclic garbage collector, tuned for the worker (measured in bench/FINDINGS.md, "The garbage collector").

- A batch keeps thousands of objects alive until it is done (records, events, states), so with Python's default
  threshold (a collection every 700 net allocations) they survive young collections, are promoted, and soon
  trigger full collections of the whole heap: 12 % of the worker's CPU in the benchmark. `tune_collector`
  raises the young threshold so that a collection runs every `YOUNG_THRESHOLD` allocations instead.
- Bulk passes over every lead (recovery's read-ahead, the deadline index rebuild) allocate millions of objects
  that live until the pass ends: `collector_paused` turns the collector off for them (at 1M leads the index
  rebuild took 10.6 s with it and 7.2 s without).
Reference counting frees almost everything the worker allocates either way; the cycle collector only bounds
what reference cycles keep alive, and still runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    """Collect the young generation every `YOUNG_THRESHOLD` allocations (Python's default: 700); the older
    generations keep their thresholds. Once per process, before the worker starts."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block (reference counting still frees what it can), then restore it
    as it was. Not reentrant-safe across threads: the worker's bulk passes run on its event loop only."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
