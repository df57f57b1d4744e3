"""Bench-only experiment (never installed by the product): run the worker on Faust's RocksDB store.

Faust's RocksDB store picks the partition database of a write from the *current event* (`Store._set` asserts one
exists). The worker writes state from its batched input path (engine/worker/faust_ext/batched_output.py,
`TableWriter.put`), where no Faust event is current, so `store="rocksdb://"` fails there as shipped
("processing lead ... failed: AssertionError"). `install()` makes `TableWriter.put` name the partition it
already knows (a context variable) and `Store._set` use it when there is no current event: the write goes to the
same partition database Faust would pick for an event of that partition. Only `python -m bench.run_worker` with
BENCH_STORE=rocksdb://... installs it, for the store-scale measurement (bench/runs.py, `measure_store_scale`).

Not done here, and needed before the product could use the store (engine/worker/faust_ext owns both):
- the write path above, in `TableWriter` itself;
- persisted offsets: Faust records a partition's changelog offset in RocksDB when *its own* changelog send
  completes (and during recovery); the worker's batched changelog does not call back, so after a restart the
  store replays the changelog from where the last recovery ended, not from the last write.
"""

from __future__ import annotations

import contextvars
from typing import Any

_partition: contextvars.ContextVar[int | None] = contextvars.ContextVar("bench_store_partition", default=None)


def install() -> None:
    from faust.stores import rocksdb
    from faust.streams import current_event

    from engine.worker.faust_ext import batched_output

    shipped_set = rocksdb.Store._set  # noqa: SLF001 - bench-only experiment, see the module docstring

    def _set(self: Any, key: bytes, value: bytes | None) -> None:
        partition = _partition.get()
        if current_event() is not None or partition is None:
            shipped_set(self, key, value)
            return
        db = self._db_for_partition(partition)
        self._key_index[key] = partition
        db.put(key, value)

    shipped_put = batched_output.TableWriter.put

    def put(self: Any, partition: int, key: bytes, value: bytes | None) -> None:
        token = _partition.set(partition)
        try:
            shipped_put(self, partition, key, value)
        finally:
            _partition.reset(token)

    rocksdb.Store._set = _set  # type: ignore[method-assign]  # noqa: SLF001
    batched_output.TableWriter.put = put  # type: ignore[method-assign]
