"""The trainer's journal: events written to a memory-mapped file before a call returns.

``log_metrics`` must return in microseconds, so it cannot wait for SQLite; but a
``kill -9`` must not lose what it accepted. Writing into a shared file mapping costs a
memory copy, and the kernel keeps the page after the process dies. The worker moves
each event into the outbox and then lets the journal start over.

Layout: an 8-byte header, then records aligned to 8-byte words, ended by a zero word.

- An *entry* record: ``length, crc32`` (two u32), ``seq`` (u64) and a marshal payload,
  padded to a whole word. It goes in with one copy; the CRC catches a process killed
  halfway through that copy and pages torn by a power cut.
- A *values* record: ``n | VALUES, epoch`` (two u32), ``seq``, the ``n`` values as
  one marshal list of floats (``[``, the count, then ``g`` and 8 bytes per value),
  padded to a whole word, and ``seq`` again. It holds one epoch of metrics whose names
  are those of the journal's *schema*, an entry record ``("k", names)`` with ``seq`` 0
  at the start. The first word goes in last, so a kill leaves the previous end word in
  place; the repeated ``seq`` stands in for the CRC against torn pages. (Version 2
  held the values as raw doubles; :func:`replay` still reads it.)

A trainer logs the same names every epoch, so after the first epoch each
``log_metrics`` serialises the values alone, in one C call that also proves each is a
plain float (marshal writes ``g`` for exact floats only), copies those bytes into the
map once, and keeps them for the worker: the names are neither encoded nor checked one
by one, and nothing is read back from the file. Sequence numbers never repeat for a
model, so after a restart only the records newer than the outbox's ``journal_seq``
are replayed.

Every byte of the file is allocated (``posix_fallocate``) before it is mapped: a store
into a page of a sparse file that the disk has no room for is a ``SIGBUS``, not an
error. When the file cannot be made or grown (a full disk, an I/O error), the journal
keeps taking calls in memory only, and says once what that puts at risk.
"""

from __future__ import annotations

import marshal
import mmap
import os
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hubfsm.core.plain import carried
from hubfsm.core.values import EpochEnded, Event
from hubfsm.durable.journal_format import (
    END,
    HEADER,
    INITIAL_SIZE,
    LITTLE,
    MAGIC,
    MAX_EPOCH,
    PADS,
    RECORD,
    VALUES,
    VERSION,
    InboxItem,
    encode,
    entry_of,
)
from hubfsm.logs import get_logger

__all__ = ["Allocate", "Journal", "JournalOpener", "journal_unavailable"]

_crc32 = zlib.crc32
_pack = RECORD.pack
_dumps = marshal.dumps

log = get_logger("hubfsm")

#: Gives a file's bytes ``[offset, offset + length)`` real blocks, or raises OSError.
Allocate = Callable[[int, int, int], None]

#: Opens a journal (:class:`Journal`'s signature; a simulated disk passes one whose
#: space fails).
JournalOpener = Callable[..., "Journal"]

#: What a session without its journal risks, said when the journal is given up.
AT_RISK = (
    "calls are kept in memory until the worker writes them to the outbox; a kill -9 or a "
    "power cut loses those not written there yet"
)


def journal_unavailable(path: Path, error: OSError) -> None:
    """Say, once per session, that the journal is given up, why, and what is at risk."""
    log.warning("journal.unavailable", path=str(path), error=str(error), at_risk=AT_RISK)


def _subclass_floats(values: Iterable[Any]) -> bytes:
    """The marshal list of ``values`` made plain floats where they are floats of a subclass.

    Empty when something else cannot be marshalled: the call then takes the slow path,
    which checks and converts every value.
    """
    try:
        return _dumps([float(v) if isinstance(v, float) else v for v in values], 2)
    except ValueError:
        return b""


class Journal:
    """An append-only, memory-mapped event log shared by the trainer and the worker.

    Args:
        path: The journal file (created if needed).
        seq: The last sequence number already used for this model.
        inbox: Where each appended event goes (see :data:`InboxItem`), under the same
            lock, so the worker sees events in sequence order.
        allocate: Gives the file real blocks (``os.posix_fallocate``; a simulated disk
            passes one that fails as a full disk does).

    Raises:
        OSError: The file cannot be made or its space allocated (ENOSPC, EIO).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        seq: int,
        inbox: deque[InboxItem],
        allocate: Allocate = os.posix_fallocate,
    ) -> None:
        self.path = Path(path)
        self.seq = seq
        self._inbox = inbox
        self._lock = threading.Lock()
        self._allocate = allocate
        #: Why the journal was given up (calls then go to the inbox only), if it was.
        self.failed: OSError | None = None
        # Kept open: growing the file allocates its new blocks through it.
        self._fd = fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # one left readable by an older version is tightened
            size = max(os.fstat(fd).st_size, INITIAL_SIZE)
            allocate(fd, 0, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._map[: HEADER.size] = HEADER.pack(MAGIC, VERSION)
        self._view()
        # Positions are in words. The schema's names, and where records start after it.
        self._names: tuple[str, ...] | None = None
        # What a values record's marshal bytes hold at every 9th byte: one tag a float.
        self._tags = b""
        self._base = 1
        self._at = 1
        self._words[1] = 0
        # Names that did not match the schema while records were pending: the next
        # start-over writes them as the new schema.
        self._wanted: tuple[str, ...] | None = None
        self._closed = False

    def _view(self) -> None:
        self._words = memoryview(self._map).cast("Q")
        self._capacity = len(self._words)

    def append(self, event: Event) -> None:
        """Write ``event`` and queue ``(seq, event)`` for the worker; returns at once."""
        self._append(encode(entry_of(event)), event)

    def _append(self, data: bytes, event: Event) -> None:
        crc = _crc32(data)
        with self._lock:
            self.seq = seq = self.seq + 1
            if self.failed is None:
                try:
                    self._write_entry(data, crc, seq)
                except OSError as exc:
                    self._give_up(exc)
            self._inbox.append((seq, event))

    def append_metrics(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Write one epoch's metrics and queue them for the worker.

        With the schema's names in the schema's order and float values, a values
        record; otherwise an entry record ``("m", epoch, metrics)``.
        """
        # Runs on the training thread between epochs: a few C calls and one copy into
        # the map, whatever the number of names. A tuple of the names compares by
        # identity first, so the schema check costs no string comparison.
        with self._lock:
            names = self._names  # None too once the journal is given up
            if names is not None and 0 <= epoch <= MAX_EPOCH and tuple(metrics) == names:
                try:
                    data = _dumps(list(metrics.values()), 2)  # 2: no reference table
                except ValueError:  # a float subclass (numpy's float64) or an object
                    data = _subclass_floats(metrics.values())
                # Every value a plain float: a ``g`` tag every 9 bytes after the header.
                if data[5::9] == self._tags:
                    at = self._at
                    last = at + 2 + (len(data) + 7) // 8  # the repeated seq's word
                    if last + 1 < self._capacity or self._room(last + 2):
                        self.seq = seq = self.seq + 1
                        words = self._words
                        self._map[(at + 2) * 8 : (at + 2) * 8 + len(data)] = data
                        words[last] = seq
                        words[last + 1] = 0
                        words[at + 1] = seq
                        words[at] = epoch << 32 | VALUES | len(names)  # the commit
                        self._at = last + 1
                        self._inbox.append((seq, epoch, names, data))
                        return
        self._append_other(epoch, metrics)

    def _append_other(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        # Values other than floats are checked (and converted) here, on the call, so that
        # nothing the wire cannot carry is ever journaled.
        item = carried(metrics)
        names = tuple(item)
        fits = (
            LITTLE
            and 0 <= epoch <= MAX_EPOCH
            and all(isinstance(name, str) for name in names)
            and all(isinstance(value, float) for value in item.values())
        )
        if fits and names != self._names and self.failed is None:
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
        was, self._at = self._at, 1
        try:
            self._write_entry(data, _crc32(data), 0)
        except OSError as exc:
            self._at = was
            self._give_up(exc)
            return
        self._names = names
        self._tags = b"g" * len(names)
        self._base = self._at
        self._wanted = None

    def _write_entry(self, data: bytes, crc: int, seq: int) -> None:
        """Write an entry record: header, payload padded to a word, and the end word."""
        self._write(_pack(len(data), crc, seq) + data + PADS[-len(data) % 8] + END)

    def _write(self, record: bytes) -> None:
        """Copy a record and the end word after it in at ``_at``; move past the record."""
        at = self._at
        end = at + len(record) // 8
        if end > self._capacity:
            self._grow(end)
        self._map[at * 8 : end * 8] = record
        self._at = end - 1

    def _grow(self, words: int) -> None:
        """Make room for ``words`` words: blocks first, then the larger mapping.

        Raises:
            OSError: The blocks cannot be had; the journal is as it was.
        """
        old = size = len(self._map)
        while size < words * 8:
            size *= 2
        self._allocate(self._fd, old, size - old)
        # A mapping with views on it cannot be resized.
        self._words.release()
        try:
            self._map.resize(size)
        finally:
            self._view()

    def _room(self, words: int) -> bool:
        """Grow to ``words`` words; False (the journal given up) if the disk has no room."""
        try:
            self._grow(words)
        except OSError as exc:
            self._give_up(exc)
            return False
        return True

    def _give_up(self, error: OSError) -> None:
        """Take calls in memory only from now on (the caller holds the lock).

        What the file holds stays valid for a replay: records end where they ended.
        """
        if self.failed is None:
            self.failed = error
            journal_unavailable(self.path, error)
        self._names = None
        self._wanted = None

    def consumed(self, seq: int) -> None:
        """The worker has everything up to ``seq`` in the outbox: start over if that is all."""
        with self._lock:
            if self._closed or self.failed is not None or seq != self.seq or self._at == self._base:
                return
            if self._wanted is not None:
                self._set_schema(self._wanted)
            else:
                self._at = self._base
                self._words[self._at] = 0

    def close(self) -> None:
        """Unmap the file (its content stays for a later replay).

        A worker that outlives the session (inside a request that has not timed out yet)
        may still take queued values records: they hold their own bytes, not the file's.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._words.release()
            self._map.close()
            os.close(self._fd)
