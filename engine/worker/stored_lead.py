"""The worker's table value: a lead's state plus how far the input it reflects goes, so that a replay after a crash
applies no input twice."""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"\x00N1"  # a bare state is a JSON object and starts with "{"
_HEADER = struct.Struct(">qq")
HEADER_SIZE = len(MAGIC) + _HEADER.size


class Applied(NamedTuple):
    """Per input topic, the next offset after the last record folded into a stored state (0: none yet).

    Why: the worker commits input offsets some time after the changelog record of the state they produced is
    written, so a worker killed in between restarts from older offsets on the newer state. Records below these
    offsets are skipped for that lead on replay: re-applied, an event would count twice, or reopen an episode
    whose action already fired. (A lead's state lives on the partition of its key, so one offset per topic.)"""

    clickstream: int = 0
    handovers: int = 0


NONE_APPLIED = Applied()


def encode(applied: Applied, state: bytes) -> bytes:
    """`MAGIC` + two big-endian int64 (`Applied`) + `LeadState.to_bytes()`: 19 bytes per lead."""
    return MAGIC + _HEADER.pack(applied.clickstream, applied.handovers) + state


def decode(value: bytes) -> tuple[Applied, bytes]:
    """(applied offsets, state bytes); a value without `MAGIC` is a bare state written before this format."""
    if value.startswith(MAGIC):
        clickstream, handovers = _HEADER.unpack_from(value, len(MAGIC))
        return Applied(clickstream, handovers), value[HEADER_SIZE:]
    return NONE_APPLIED, value
