"""The journal's record format: its constants, and entries to and from trainer events.

See :mod:`hubfsm.durable.journal` for the layout; the writer there and the reader in
:mod:`hubfsm.durable.journal_scan` share what is here.
"""

from __future__ import annotations

import marshal
import struct
import sys
from typing import Any, TypeAlias

from hubfsm.core.plain import plain
from hubfsm.core.values import (
    Barrier,
    CheckpointOffered,
    EpochEnded,
    Event,
    FileStamp,
    FinishPending,
    FinishRequested,
    Interrupted,
    Resumed,
    Start,
)

MAGIC = b"HFJ1"
#: Version 1 had unaligned entry records only, version 2 values records of raw doubles;
#: :func:`replay` still reads both.
VERSION = 3
HEADER = struct.Struct("<4sI")
RECORD = struct.Struct("<IIQ")
#: Marks a values record in the first word's low half.
VALUES = 0x8000_0000
MAX_EPOCH = 0xFFFF_FFFF
PADS = tuple(bytes(n) for n in range(8))
END = bytes(8)
#: Values records of version 2 were stored in native byte order and read back
#: little-endian; the words of the values record header still are.
LITTLE = sys.byteorder == "little"
INITIAL_SIZE = 1 << 20

#: An inbox item: ``(seq, event)``; or, so that the training thread builds no event
#: value for an epoch's metrics, ``(seq, epoch, names, values)`` for a values record
#: (``values`` its marshal bytes, decoded by :meth:`Journal.event_of`) and
#: ``(0, epoch, metrics)`` without a journal.
#: ``seq`` is 0 for events that bypass the journal.
InboxItem: TypeAlias = (
    tuple[int, Event] | tuple[int, int, tuple[str, ...], bytes] | tuple[int, int, dict[str, Any]]
)


def encode(entry: tuple[Any, ...]) -> bytes:
    """Serialise a journal entry (marshal; odd number types made plain first)."""
    try:
        return marshal.dumps(entry, 2)  # version 2: no reference table to build
    except ValueError:
        return marshal.dumps(plain(entry), 2)


def entry_of(event: Event) -> tuple[Any, ...]:
    """The journal entry of a trainer event: a tuple of plain values, tagged by type."""
    if isinstance(event, EpochEnded):
        return ("m", event.epoch, event.metrics)
    if isinstance(event, CheckpointOffered):
        st = event.stamp
        return ("c", event.path, event.epoch, event.is_best, st.size, st.mtime_ns, st.inode)
    if isinstance(event, FinishRequested):
        st = event.stamp
        return ("f", event.path, event.epoch, event.map50_95, st.size, st.mtime_ns, st.inode,
                event.timeout, event.held)  # fmt: skip
    if isinstance(event, FinishPending):
        return ("p", event.timeout)
    if isinstance(event, Start):
        return ("s",)
    if isinstance(event, Interrupted):
        return ("i",)
    if isinstance(event, Resumed):
        return ("r",)
    return ("b",)


def event_of(entry: Any) -> Event | None:
    """The trainer event a journal entry encodes, or None for an entry of no event."""
    if not isinstance(entry, (tuple, list)) or not entry:
        return None
    tag = entry[0]
    if tag == "m":
        return EpochEnded(int(entry[1]), dict(entry[2]))
    if tag == "c":
        _, path, epoch, is_best, size, mtime_ns, inode = entry
        return CheckpointOffered(path, epoch, bool(is_best), FileStamp(size, mtime_ns, inode))
    if tag == "f":
        # Entries written before the held link was journaled have one field fewer.
        _, path, epoch, map50_95, size, mtime_ns, inode, timeout, *held = entry
        stamp = FileStamp(size, mtime_ns, inode)
        return FinishRequested(path, epoch, map50_95, stamp, timeout, held[0] if held else None)
    if tag == "p":
        return FinishPending(float(entry[1]))
    simple: dict[str, Event] = {"s": Start(), "i": Interrupted(), "r": Resumed(), "b": Barrier()}
    return simple.get(tag)
