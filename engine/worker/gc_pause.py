"""Bulk work over every lead (recovery's read-ahead, the deadline index rebuild) without Python's cyclic garbage
collector: each pass allocates millions of objects that live until it ends, and every collection it triggers walks
the growing heap again. Measured at 1M leads: the index rebuild took 10.6 s with the collector and 7.2 s without
(bench/FINDINGS.md)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


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
