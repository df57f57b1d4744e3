"""How many leads the worker holds and how many bytes their stored values take, per owned partition, kept up to
date on every write: the `nudge_active_leads` and `nudge_state_bytes` gauges used to come from a scan of the whole
table every 5 s, which at 1M leads held the worker's event loop for over a second each time (bench/FINDINGS.md)."""

from __future__ import annotations

from collections.abc import Iterable


class TableFigures:
    """Entries and bytes of the lead table per partition. `replace` follows each write, and after recovery the
    full scan that rebuilds the deadline index counts every entry with it, after `clear`; `forget` drops revoked
    partitions. Suppression markers count as entries, as they are stored values."""

    def __init__(self) -> None:
        self._entries: dict[int, int] = {}
        self._bytes: dict[int, int] = {}

    def clear(self) -> None:
        """Forget every figure: a full scan counts each entry again (`replace(partition, None, value)`)."""
        self._entries.clear()
        self._bytes.clear()

    def replace(self, partition: int, old: bytes | None, new: bytes | None) -> None:
        """An entry of `partition` goes from `old` to `new` (None: absent)."""
        change = (new is not None) - (old is not None)
        if change:
            self._entries[partition] = self._entries.get(partition, 0) + change
        self._bytes[partition] = self._bytes.get(partition, 0) + len(new or b"") - len(old or b"")

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._entries.pop(partition, None)
            self._bytes.pop(partition, None)

    @property
    def entries(self) -> int:
        return sum(self._entries.values())

    @property
    def bytes(self) -> int:
        return sum(self._bytes.values())
