"""Experimental monkeypatches, applied only when asked (`python -m bench --worker-patch NAME`), to measure
what a change would gain before anyone makes it for real. Never used by `make bench`'s default run and never
by the product: each one changes a library's behaviour in a way that is not safe in general (see its note).

- `direct_deliver`: Faust's consumer drain loop (`faust.transport.consumer.Consumer._drain_messages`) hands
  every message to the stream through `wait_first(callback(message), suspend_flow.wait())`, which creates
  four asyncio tasks and cancels three per message. The patch awaits the callback directly while the flow
  is not suspended. Unsafe in general: during a rebalance a callback blocked on a full stream buffer is no
  longer abandoned when the flow is suspended. It quantifies the per-message cost the notes measured.
- `tansu_fetch_wait`: Tansu 0.6.0 does not answer a waiting fetch when new records arrive; it answers when
  `fetch_max_wait_ms` expires. Faust hard-codes 1,500 ms for its worker consumer, so every hop through a
  topic on Tansu (clickstream -> worker, tick -> worker) adds 0-1.5 s. Real Kafka answers as soon as data
  arrives. The patch caps the worker consumer's fetch wait at 20 ms, which makes Tansu behave like Kafka
  for latency, at the cost of ~50 idle fetches per second. Measured with a raw consumer on the dev broker:
  arrival 0.48-1.23 s after send with 1,500 ms, 0.1-0.23 s with 500 ms, 3-11 ms with 20 ms.
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
TANSU_FETCH_WAIT_MS = 20


def _tansu_fetch_wait() -> None:
    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    class ShortFetchWaitConsumer(aiokafka.AIOKafkaConsumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = min(kwargs.get("fetch_max_wait_ms", 500), TANSU_FETCH_WAIT_MS)
            super().__init__(*args, **kwargs)

    driver.aiokafka.AIOKafkaConsumer = ShortFetchWaitConsumer  # type: ignore[misc]


PATCHES["tansu_fetch_wait"] = _tansu_fetch_wait


def apply(names: str) -> None:
    """Apply the comma-separated patches (BENCH_PATCHES); unknown names are an error."""
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in PATCHES:
            raise ValueError(f"unknown bench patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
