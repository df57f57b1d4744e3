"""The worker's table value: a lead's state plus how far the input it reflects goes, so that a replay after a crash
applies no input twice; whether the lead is suppressed (a privacy request: its later events are dropped); and when
it was last written, so idle leads can be dropped."""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"\x00N1"  # a bare state is a JSON object and starts with "{"
_HEADER = struct.Struct(">qq")
HEADER_SIZE = len(MAGIC) + _HEADER.size
MAGIC_V2 = b"\x00N2"
_HEADER_V2 = struct.Struct(">qqBq")
HEADER_V2_SIZE = len(MAGIC_V2) + _HEADER_V2.size
SUPPRESSED = 0x01  # flag: the lead's later events are dropped (GDPR Art. 21 / a regulation of type Suppress*)


class Applied(NamedTuple):
    """Per input topic, the next offset after the last record folded into a stored state (0: none yet).

    Why: the worker commits input offsets some time after the changelog record of the state they produced is
    written, so a worker killed in between restarts from older offsets on the newer state. Records below these
    offsets are skipped for that lead on replay: re-applied, an event would count twice, or reopen an episode
    whose action already fired. (A lead's state lives on the partition of its key, so one offset per topic.)"""

    clickstream: int = 0
    handovers: int = 0


NONE_APPLIED = Applied()


class Stored(NamedTuple):
    """A decoded table value. `state` is `LeadState.to_bytes()`, or empty for a suppression marker (a lead erased
    and suppressed: nothing of it is kept but the mark). `touched_ms`: wall time of the write (0: written before
    this format)."""

    applied: Applied
    state: bytes
    suppressed: bool = False
    touched_ms: int = 0


def encode(applied: Applied, state: bytes, *, suppressed: bool = False, touched_ms: int = 0) -> bytes:
    """`MAGIC_V2` + two big-endian int64 (`Applied`) + a flags byte + int64 write time + `LeadState.to_bytes()`:
    28 bytes per lead."""
    flags = SUPPRESSED if suppressed else 0
    return MAGIC_V2 + _HEADER_V2.pack(applied.clickstream, applied.handovers, flags, touched_ms) + state


def read(value: bytes) -> Stored:
    """Every field of a stored value, in any format written so far: `MAGIC_V2`, `MAGIC` (offsets only) or a bare
    state (before the header existed)."""
    if value.startswith(MAGIC_V2):
        clickstream, handovers, flags, touched_ms = _HEADER_V2.unpack_from(value, len(MAGIC_V2))
        return Stored(Applied(clickstream, handovers), value[HEADER_V2_SIZE:], bool(flags & SUPPRESSED), touched_ms)
    if value.startswith(MAGIC):
        clickstream, handovers = _HEADER.unpack_from(value, len(MAGIC))
        return Stored(Applied(clickstream, handovers), value[HEADER_SIZE:])
    return Stored(NONE_APPLIED, value)


def decode(value: bytes) -> tuple[Applied, bytes]:
    """(applied offsets, state bytes; empty for a suppression marker)."""
    stored = read(value)
    return stored.applied, stored.state


def live_state(value: bytes) -> bytes:
    """The state bytes of a stored value, or empty for a suppressed lead (whose state, if kept, fires nothing) and
    for a marker: what the deadline index is rebuilt from, without building a `Stored` per lead."""
    if value.startswith(MAGIC_V2):
        suppressed, _ = marks(value)
        return b"" if suppressed else value[HEADER_V2_SIZE:]
    return read(value).state


def marks(value: bytes) -> tuple[bool, int]:
    """(suppressed, touched_ms) of a stored value without copying its state (the idle sweep reads every entry)."""
    if value.startswith(MAGIC_V2):
        _, _, flags, touched_ms = _HEADER_V2.unpack_from(value, len(MAGIC_V2))
        return bool(flags & SUPPRESSED), touched_ms
    return False, 0
