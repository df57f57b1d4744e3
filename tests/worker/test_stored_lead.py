"""The worker's table value (engine/worker/stored_lead.py): state plus the input offsets it reflects, the
suppression flag and the write time; every format written so far still reads."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from engine.worker.stored_lead import (
    HEADER_SIZE,
    HEADER_V2_SIZE,
    MAGIC,
    NONE_APPLIED,
    Applied,
    Stored,
    decode,
    encode,
    live_state,
    marks,
    read,
)

STATE = b'{"id":"lead-1","f":{"ss":1}}'
offsets = st.integers(min_value=0, max_value=2**62)


@given(offsets, offsets, st.booleans(), st.integers(min_value=0, max_value=2**62))
def test_round_trip(clickstream: int, handovers: int, suppressed: bool, touched_ms: int) -> None:
    value = encode(Applied(clickstream, handovers), STATE, suppressed=suppressed, touched_ms=touched_ms)
    assert read(value) == Stored(Applied(clickstream, handovers), STATE, suppressed, touched_ms)
    assert decode(value) == (Applied(clickstream, handovers), STATE)
    assert marks(value) == (suppressed, touched_ms)
    assert live_state(value) == (b"" if suppressed else STATE)
    assert len(value) == HEADER_V2_SIZE + len(STATE) == 28 + len(STATE)


def test_a_suppression_marker_has_no_state() -> None:
    value = encode(Applied(5, 2), b"", suppressed=True, touched_ms=1)
    assert read(value) == Stored(Applied(5, 2), b"", True, 1)
    assert live_state(value) == b""
    assert len(value) == 28


def test_the_previous_format_still_reads_as_not_suppressed_and_never_written() -> None:
    value = MAGIC + struct.pack(">qq", 7, 3) + STATE
    assert len(value) == HEADER_SIZE + len(STATE)
    assert read(value) == Stored(Applied(7, 3), STATE, False, 0)
    assert marks(value) == (False, 0)
    assert live_state(value) == STATE


def test_a_bare_state_written_before_the_header_existed_reads_as_nothing_applied() -> None:
    assert decode(STATE) == (NONE_APPLIED, STATE)
    assert read(STATE) == Stored(NONE_APPLIED, STATE, False, 0)
    assert live_state(STATE) == STATE
