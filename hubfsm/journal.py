"""The trainer's journal: events written to a memory-mapped file before a call returns.

``log_metrics`` must return in microseconds, so it cannot wait for SQLite; but a
``kill -9`` must not lose what it accepted. Writing into a shared file mapping costs a
memory copy, and the kernel keeps the page after the process dies. The worker moves
each event into the outbox and then lets the journal start over.

Layout: a header, then records of ``length, crc32, seq`` and a marshal payload,
ended by a zero length. Each record goes in with one copy; the CRC over its payload
catches a process killed halfway through that copy and pages torn by a power cut, and
replay stops at the first record that fails it. Sequence numbers never repeat for a
model, so after a restart only the records newer than the outbox's ``journal_seq``
are replayed.
"""

from __future__ import annotations

import marshal
import mmap
import os
import struct
import threading
import zlib
from collections import deque
from pathlib import Path
from typing import Any

MAGIC = b"HFJ1"
_HEADER = struct.Struct("<4sI")
_RECORD = struct.Struct("<IIQ")
_END = b"\0\0\0\0"
INITIAL_SIZE = 1 << 20


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


_crc32 = zlib.crc32
_pack = _RECORD.pack


def encode(entry: tuple[Any, ...]) -> bytes:
    """Serialise a journal entry (marshal; odd number types made plain first)."""
    try:
        return marshal.dumps(entry, 2)  # version 2: no reference table to build
    except ValueError:
        return marshal.dumps(_plain(entry), 2)


def decode(data: bytes) -> Any:
    """The entry :func:`encode` turned into ``data``."""
    return marshal.loads(data)


class Journal:
    """An append-only, memory-mapped event log shared by the trainer and the worker.

    Args:
        path: The journal file (created if needed).
        seq: The last sequence number already used for this model.
        inbox: Where each appended entry's job goes, under the same lock, so the
            worker sees jobs in sequence order.
    """

    def __init__(self, path: str | os.PathLike[str], *, seq: int, inbox: deque[Any]) -> None:
        self.path = Path(path)
        self.seq = seq
        self._inbox = inbox
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = max(os.fstat(fd).st_size, INITIAL_SIZE)
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
            self._size = size
        finally:
            os.close(fd)
        self._map[: _HEADER.size] = _HEADER.pack(MAGIC, 1)
        self._pos = _HEADER.size
        self._map[self._pos : self._pos + 4] = _END

    def append(self, entry: tuple[Any, ...], job: Any) -> None:
        """Write ``entry`` and queue ``(seq, job)`` for the worker; returns at once."""
        self.write(encode(entry), job)

    def write(self, data: bytes, job: Any) -> None:
        """Write an encoded entry and queue ``(seq, job)`` for the worker."""
        # This runs on the training thread between epochs, with cold caches: every
        # function call and attribute lookup shows, so it is kept to one copy into the map.
        crc = _crc32(data)
        with self._lock:
            seq = self.seq + 1
            pos = self._pos
            record = _pack(len(data), crc, seq) + data + _END
            end = pos + len(record)
            if end > self._size:
                self._grow(end)
            # One copy; a process killed halfway leaves a record whose CRC fails.
            self._map[pos:end] = record
            self._pos = end - 4
            self.seq = seq
            self._inbox.append((seq, job))

    def _grow(self, needed: int) -> None:
        size = self._size
        while size < needed:
            size *= 2
        self._map.resize(size)
        self._size = size

    def consumed(self, seq: int) -> None:
        """The worker has everything up to ``seq`` in the outbox: start over if that is all."""
        with self._lock:
            if seq == self.seq and self._pos > _HEADER.size:
                self._pos = _HEADER.size
                self._map[self._pos : self._pos + 4] = _END

    def close(self) -> None:
        """Unmap the file (its content stays for a later replay)."""
        with self._lock:
            self._map.close()


def replay(path: str | os.PathLike[str], *, after: int) -> list[tuple[int, Any]]:
    """The intact records of a journal newer than ``after``, as ``(seq, entry)`` pairs.

    Reading stops at the end mark, a torn or corrupt record, or a break in sequence
    (older records beyond the current end are left over from before a restart).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        return []
    out: list[tuple[int, Any]] = []
    pos = _HEADER.size
    expected: int | None = None
    while pos + _RECORD.size <= len(data):
        length, crc, seq = _RECORD.unpack_from(data, pos)
        body = data[pos + _RECORD.size : pos + _RECORD.size + length]
        if length == 0 or len(body) != length or zlib.crc32(body) != crc:
            break
        if expected is not None and seq != expected:
            break
        try:
            entry = marshal.loads(body)
        except (ValueError, EOFError, TypeError):
            break
        if seq > after:
            out.append((seq, entry))
        expected = seq + 1
        pos += _RECORD.size + length
    return out
