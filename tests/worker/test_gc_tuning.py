"""engine/worker/gc_tuning.py: the young threshold is raised, the older ones kept; a paused collector comes back as
it was, also when the block raises."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from engine.worker.gc_tuning import YOUNG_THRESHOLD, collector_paused, tune_collector


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()


def test_tuning_raises_the_young_threshold_only() -> None:
    gc.set_threshold(700, 11, 12)
    tune_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)


def test_a_paused_collector_is_restored_as_it_was() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("the pass failed")
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled(), "a collector that was off stays off"
