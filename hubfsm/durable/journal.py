"""The trainer's journal: events written to a memory-mapped file before a call returns.

``log_metrics`` must return in microseconds, so it cannot wait for SQLite; but a
``kill -9`` must not lose what it accepted. Writing into a shared file mapping costs a
memory copy, and the kernel keeps the page after the process dies. The worker moves
each event into the outbox and then lets the journal start over.

Layout: an 8-byte header, then records aligned to 8-byte words, ended by a zero word.

- An *entry* record: ``length, crc32`` (two u32), ``seq`` (u64) and a marshal payload,
  padded to a whole word. It goes in with one copy; the CRC catches a process killed
  halfway through that copy and pages torn by a power cut.
- A *values* record: ``n | VALUES, epoch`` (two u32), ``seq``, ``n`` doubles and
  ``seq`` again. It holds one epoch of metrics whose names are those of the journal's
  *schema*, an entry record ``("k", names)`` with ``seq`` 0 at the start. Its words go
  in one by one, the first last, so a kill leaves the previous end word in place; the
  repeated ``seq`` stands in for the CRC against torn pages.

A trainer logs the same names every epoch, so after the first epoch each
``log_metrics`` writes a dozen words and serialises nothing: on a training thread with
cold caches that is most of the call's cost. Sequence numbers never repeat for a
model, so after a restart only the records newer than the outbox's ``journal_seq``
are replayed.
"""

from __future__ import annotations

import marshal
import mmap
import os
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

from hubfsm.core.events import (
    Barrier,
    CheckpointOffered,
    EpochEnded,
    Event,
    FileStamp,
    FinishPending,
    FinishRequested,
    Interrupted,
    Start,
)

MAGIC = b"HFJ1"
#: Version 1 had unaligned entry records only; :func:`replay` still reads it.
VERSION = 2
_HEADER = struct.Struct("<4sI")
_RECORD = struct.Struct("<IIQ")
#: Marks a values record in the first word's low half.
VALUES = 0x8000_0000
_MAX_EPOCH = 0xFFFF_FFFF
_PADS = tuple(bytes(n) for n in range(8))
_END = bytes(8)
#: Values records are stored in native byte order and read back little-endian.
_LITTLE = sys.byteorder == "little"
INITIAL_SIZE = 1 << 20

#: An inbox item: ``(seq, event)``, or ``(seq, at, names, epoch)`` for a values record
#: (the event is built on the worker's side, by :meth:`Journal.event_of`, so that the
#: training thread builds nothing). ``seq`` is 0 for events that bypass the journal.
InboxItem: TypeAlias = tuple[int, Event] | tuple[int, int, tuple[str, ...], int]

_crc32 = zlib.crc32
_pack = _RECORD.pack


def _plain(value: Any) -> Any:
    """Turn numpy and torch scalars (anything with ``item()``) into Python numbers."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def encode(entry: tuple[Any, ...]) -> bytes:
    """Serialise a journal entry (marshal; odd number types made plain first)."""
    try:
        return marshal.dumps(entry, 2)  # version 2: no reference table to build
    except ValueError:
        return marshal.dumps(_plain(entry), 2)


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
                event.timeout)  # fmt: skip
    if isinstance(event, FinishPending):
        return ("p", event.timeout)
    if isinstance(event, Start):
        return ("s",)
    if isinstance(event, Interrupted):
        return ("i",)
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
        _, path, epoch, map50_95, size, mtime_ns, inode, timeout = entry
        return FinishRequested(path, epoch, map50_95, FileStamp(size, mtime_ns, inode), timeout)
    if tag == "p":
        return FinishPending(float(entry[1]))
    simple: dict[str, Event] = {"s": Start(), "i": Interrupted(), "b": Barrier()}
    return simple.get(tag)


class Journal:
    """An append-only, memory-mapped event log shared by the trainer and the worker.

    Args:
        path: The journal file (created if needed).
        seq: The last sequence number already used for this model.
        inbox: Where each appended event goes (see :data:`InboxItem`), under the same
            lock, so the worker sees events in sequence order.
    """

    def __init__(self, path: str | os.PathLike[str], *, seq: int, inbox: deque[InboxItem]) -> None:
        self.path = Path(path)
        self.seq = seq
        self._inbox = inbox
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = max(os.fstat(fd).st_size, INITIAL_SIZE)
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._map[: _HEADER.size] = _HEADER.pack(MAGIC, VERSION)
        self._view()
        # Positions are in words. The schema's names, and where records start after it.
        self._names: tuple[str, ...] | None = None
        self._base = 1
        self._at = 1
        self._words[1] = 0
        # Names that did not match the schema while records were pending: the next
        # start-over writes them as the new schema.
        self._wanted: tuple[str, ...] | None = None
        # After close, a copy of the records for jobs the worker has not run yet.
        self._frozen: bytes | None = None

    def _view(self) -> None:
        self._words = memoryview(self._map).cast("Q")
        self._floats = memoryview(self._map).cast("d")
        self._capacity = len(self._words)

    def append(self, event: Event) -> None:
        """Write ``event`` and queue ``(seq, event)`` for the worker; returns at once."""
        self._append(encode(entry_of(event)), event)

    def _append(self, data: bytes, event: Event) -> None:
        crc = _crc32(data)
        with self._lock:
            self.seq = seq = self.seq + 1
            self._write_entry(data, crc, seq)
            self._inbox.append((seq, event))

    def event_of(self, item: InboxItem) -> Event:
        """The event of an inbox item; a values record is read back from the journal."""
        if len(item) == 2:
            return item[1]
        _, at, names, epoch = item
        with self._lock:
            frozen = self._frozen
            if frozen is None:
                values = self._floats[at + 2 : at + 2 + len(names)].tolist()
            else:
                values = list(struct.unpack_from(f"={len(names)}d", frozen, (at + 2) * 8))
        return EpochEnded(epoch, dict(zip(names, values, strict=True)))

    def append_metrics(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Write one epoch's metrics and queue them for the worker.

        With the schema's names in the schema's order and float values, a values
        record; otherwise an entry record ``("m", epoch, metrics)``.
        """
        # Runs on the training thread between epochs: kept to plain bytecode and
        # stores into the map, with nothing to serialise.
        with self._lock:
            names = self._names
            if names is not None and len(metrics) == len(names) and 0 <= epoch <= _MAX_EPOCH:
                at = self._at
                if at + len(names) + 4 > self._capacity:
                    self._grow(at + len(names) + 4)
                floats = self._floats
                i = at + 2
                for name, value in metrics.items():
                    if name != names[i - at - 2] or not isinstance(value, float):
                        break
                    floats[i] = value
                    i += 1
                else:
                    self.seq = seq = self.seq + 1
                    words = self._words
                    words[i] = seq
                    words[i + 1] = 0
                    words[at + 1] = seq
                    words[at] = epoch << 32 | VALUES | len(names)  # the commit
                    self._at = i + 1
                    self._inbox.append((seq, at, names, epoch))
                    return
        self._append_other(epoch, metrics)

    def _append_other(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        item = dict(metrics)
        names = tuple(item)
        fits = (
            _LITTLE
            and 0 <= epoch <= _MAX_EPOCH
            and all(isinstance(name, str) for name in names)
            and all(isinstance(value, float) for value in item.values())
        )
        if fits and names != self._names:
            with self._lock:
                if self._at == self._base:  # nothing pending: the schema can change now
                    self._set_schema(names)
                else:
                    self._wanted = names
            if self._names == names:
                return self.append_metrics(epoch, item)
        event = EpochEnded(epoch, item)
        self._append(encode(entry_of(event)), event)

    def _set_schema(self, names: tuple[str, ...]) -> None:
        data = encode(("k", names))
        self._at = 1
        self._write_entry(data, _crc32(data), 0)
        self._names = names
        self._base = self._at
        self._wanted = None

    def _write_entry(self, data: bytes, crc: int, seq: int) -> None:
        """Write an entry record: header, payload padded to a word, and the end word."""
        self._write(_pack(len(data), crc, seq) + data + _PADS[-len(data) % 8] + _END)

    def _write(self, record: bytes) -> None:
        """Copy a record and the end word after it in at ``_at``; move past the record."""
        at = self._at
        end = at + len(record) // 8
        if end > self._capacity:
            self._grow(end)
        self._map[at * 8 : end * 8] = record
        self._at = end - 1

    def _grow(self, words: int) -> None:
        size = len(self._map)
        while size < words * 8:
            size *= 2
        # A mapping with views on it cannot be resized.
        self._words.release()
        self._floats.release()
        self._map.resize(size)
        self._view()

    def consumed(self, seq: int) -> None:
        """The worker has everything up to ``seq`` in the outbox: start over if that is all."""
        with self._lock:
            if self._frozen is not None or seq != self.seq or self._at == self._base:
                return
            if self._wanted is not None:
                self._set_schema(self._wanted)
            else:
                self._at = self._base
                self._words[self._at] = 0

    def close(self) -> None:
        """Unmap the file (its content stays for a later replay).

        A worker that outlives the session (inside a request that has not timed out yet)
        may still run jobs that read values records: they read a copy taken here, since
        the file may by then belong to a new session of the same model.
        """
        with self._lock:
            if self._frozen is not None:
                return
            self._frozen = bytes(self._map[: (self._at + 1) * 8])
            self._words.release()
            self._floats.release()
            self._map.close()


def queued_epoch(item: InboxItem) -> int | None:
    """The epoch of an inbox item that ends an epoch, else None."""
    if len(item) == 4:
        return item[3]
    event = item[1]
    return event.epoch if isinstance(event, EpochEnded) else None


def events(path: str | os.PathLike[str], *, after: int) -> list[tuple[int, Event]]:
    """The trainer events of the intact records newer than ``after`` (see :func:`replay`)."""
    out = []
    for seq, entry in replay(path, after=after):
        event = event_of(entry)
        if event is not None:
            out.append((seq, event))
    return out


def replay(path: str | os.PathLike[str], *, after: int) -> list[tuple[int, Any]]:
    """The intact records of a journal newer than ``after``, as ``(seq, entry)`` pairs.

    Values records come back as ``("m", epoch, metrics)`` entries, and the schema is
    not returned. Reading stops at the end word, a torn or corrupt record, or a break in
    sequence (older records beyond the current end are left over from before a restart).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < _HEADER.size:
        return []
    magic, version = _HEADER.unpack_from(data)
    if magic != MAGIC or version not in (1, VERSION):
        return []
    align = 8 if version == VERSION else 1
    out: list[tuple[int, Any]] = []
    pos = _HEADER.size
    expected: int | None = None
    names: tuple[str, ...] | None = None
    while pos + _RECORD.size <= len(data):
        low, high, seq = _RECORD.unpack_from(data, pos)
        entry: Any
        if low & VALUES and version == VERSION:
            n = low & ~VALUES
            end = pos + _RECORD.size + 8 * n
            if names is None or n != len(names) or end + 8 > len(data):
                break
            if struct.unpack_from("<Q", data, end)[0] != seq:
                break
            values = struct.unpack_from(f"<{n}d", data, pos + _RECORD.size)
            entry = ("m", high, dict(zip(names, values, strict=True)))
            next_pos = end + 8
        else:
            body = data[pos + _RECORD.size : pos + _RECORD.size + low]
            if low == 0 or len(body) != low or zlib.crc32(body) != high:
                break
            try:
                entry = marshal.loads(body)
            except (ValueError, EOFError, TypeError):
                break
            next_pos = pos + _RECORD.size + low + (-low % align)
            if seq == 0 and isinstance(entry, tuple) and entry[:1] == ("k",):
                names = tuple(entry[1])
                pos = next_pos
                continue
        if expected is not None and seq != expected:
            break
        if seq > after:
            out.append((seq, entry))
        expected = seq + 1
        pos = next_pos
    return out
