"""Experimental monkeypatches, applied only when asked (`python -m bench --worker-patch NAME`), to measure
what a change would gain before anyone makes it for real. Never used by `make bench`'s default run and never
by the product: each one changes a library's behaviour in a way that is not safe in general (see its note).

- `direct_deliver` (superseded: the worker ships a safe version, engine/fast_delivery.py): Faust's consumer
  drain loop (`faust.transport.consumer.Consumer._drain_messages`) hands every message to the stream through
  `wait_first(callback(message), suspend_flow.wait())`, which creates four asyncio tasks and cancels three per
  message. The patch awaits the callback directly while the flow is not suspended. Unsafe in general: during a
  rebalance a callback blocked on a full stream buffer is no longer abandoned when the flow is suspended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

PATCHES: dict[str, Callable[[], None]] = {}


def _direct_deliver() -> None:
    from faust.transport.consumer import CONSUMER_FETCHING, Consumer

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - Faust's loop, patched
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        suspended = self.suspend_flow.is_set
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator, getmany(timeout=1.0))
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > 100:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if suspended():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                await callback(message)  # the patch: no per-message tasks
                            set_read_offset(tp, offset)
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]


PATCHES["direct_deliver"] = _direct_deliver


def apply(names: str) -> None:
    """Apply the comma-separated patches (BENCH_PATCHES); unknown names are an error."""
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in PATCHES:
            raise ValueError(f"unknown bench patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
