"""`TableFigures` (engine/worker/table_figures.py): the gauges' entries and bytes follow every write exactly as a
scan of the table would count them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.worker.table_figures import TableFigures

values = st.one_of(st.none(), st.binary(max_size=40))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), values), max_size=80), st.sets(st.integers(0, 3)))
def test_figures_follow_writes_as_a_scan_counts(writes: list[tuple[int, int, bytes | None]], revoked: set[int]) -> None:
    figures = TableFigures()
    figures.replace(1, None, b"before the restart")
    table: dict[tuple[int, int], bytes] = {(0, 100): b"recovered"}  # (partition, key) -> stored value
    figures.clear()  # a restart's scan counts the recovered table afresh
    figures.replace(0, None, b"recovered")
    for partition, key, value in writes:
        figures.replace(partition, table.get((partition, key)), value)
        if value is None:
            table.pop((partition, key), None)
        else:
            table[(partition, key)] = value
    figures.forget(revoked)
    kept = {where: value for where, value in table.items() if where[0] not in revoked}
    assert figures.entries == len(kept)
    assert figures.bytes == sum(len(value) for value in kept.values())
