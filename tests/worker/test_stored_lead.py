"""The worker's table value (engine/worker/stored_lead.py): state plus the input offsets it reflects."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.worker.stored_lead import HEADER_SIZE, NONE_APPLIED, Applied, decode, encode

STATE = b'{"id":"lead-1","f":{"ss":1}}'


@given(st.integers(min_value=0, max_value=2**62), st.integers(min_value=0, max_value=2**62))
def test_round_trip(clickstream: int, handovers: int) -> None:
    value = encode(Applied(clickstream, handovers), STATE)
    assert decode(value) == (Applied(clickstream, handovers), STATE)
    assert len(value) == HEADER_SIZE + len(STATE) == 19 + len(STATE)


def test_a_bare_state_written_before_the_header_existed_reads_as_nothing_applied() -> None:
    assert decode(STATE) == (NONE_APPLIED, STATE)
