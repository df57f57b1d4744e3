"""Read-only views of bookkeeping Faust keeps in private attributes: what the worker needs to rebuild its deadline
index, without touching Faust internals anywhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def recovered_partitions(table: Any) -> Mapping[bytes, int]:
    """Key → changelog partition for each key the table's memory store read from its changelog on recovery.

    The memory store records it in `Store._key_partition` and drops the entries of partitions that were not
    assigned to this worker when recovery completed. Keys this process wrote since then are not in it (the
    worker remembers those itself). Empty for a store that keeps no such map."""
    partitions: Mapping[bytes, int] = getattr(table.data, "_key_partition", {})
    return partitions
