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

import attrs

from hubfsm.core.events import (
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
from hubfsm.logs import get_logger

log = get_logger("hubfsm")

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

#: An inbox item: ``(seq, event)``; or, so that the training thread builds no event
#: value for an epoch's metrics, ``(seq, at, names, epoch)`` for a values record (read
#: back by :meth:`Journal.event_of`) and ``(0, epoch, metrics)`` without a journal.
#: ``seq`` is 0 for events that bypass the journal.
InboxItem: TypeAlias = (
    tuple[int, Event] | tuple[int, int, tuple[str, ...], int] | tuple[int, int, dict[str, Any]]
)

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
        _, path, epoch, map50_95, size, mtime_ns, inode, timeout = entry
        return FinishRequested(path, epoch, map50_95, FileStamp(size, mtime_ns, inode), timeout)
    if tag == "p":
        return FinishPending(float(entry[1]))
    simple: dict[str, Event] = {"s": Start(), "i": Interrupted(), "r": Resumed(), "b": Barrier()}
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
            os.fchmod(fd, 0o600)  # one left readable by an older version is tightened
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
        if len(item) == 3:
            return EpochEnded(item[1], item[2])
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
    if len(item) == 3:
        return item[1]
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


@attrs.frozen
class JournalDamage:
    """What a damaged journal lost: found by :func:`scan`, for a command to report.

    Attributes:
        path: The journal file.
        stretches: How many unreadable stretches the file has.
        bad_bytes: How many bytes in them could not be read.
        lost: How many records newer than the outbox's are lost for sure, or None when
            the damage runs to the end of the records and the count cannot be known.
        seqs: The first and last sequence number lost (the last None when unknown).
        epochs: The lowest and highest epoch whose metrics may be among the lost
            records, where the records around the damage tell; else None.
        header: The file's header was unreadable.
    """

    path: str
    stretches: int
    bad_bytes: int
    lost: int | None
    seqs: tuple[int, int | None] | None
    epochs: tuple[int, int] | None
    header: bool = False

    def describe(self) -> str:
        """One line for a person: what is damaged and what was lost."""
        parts = [f"journal {self.path} is damaged"]
        if self.header:
            parts.append("its header is unreadable")
        if self.stretches:
            parts.append(f"{self.bad_bytes} bytes in {self.stretches} stretch(es) are unreadable")
        if self.lost is None:
            first = self.seqs[0] if self.seqs else "?"
            parts.append(f"an unknown number of records from record {first} on are lost")
        elif self.lost:
            assert self.seqs is not None
            parts.append(f"{self.lost} record(s) lost (records {self.seqs[0]}-{self.seqs[1]})")
        if self.epochs is not None:
            lo, hi = self.epochs
            parts.append(f"epoch {lo} affected" if lo == hi else f"epochs {lo}-{hi} affected")
        return "; ".join(parts)


@attrs.frozen
class Replay:
    """What :func:`scan` read: the intact records, and the damage if there was any."""

    records: list[tuple[int, Any]]
    damage: JournalDamage | None = None


@attrs.frozen
class _Found:
    kind: str  # "k" schema, "m"/"e" a record, "v" a values record without its schema
    seq: int
    entry: Any
    end: int


def _record_at(data: bytes, pos: int, version: int, names: tuple[str, ...] | None) -> _Found | None:
    """The record that starts at ``pos``, if an intact one does."""
    if pos + _RECORD.size > len(data):
        return None
    low, high, seq = _RECORD.unpack_from(data, pos)
    if low & VALUES and version == VERSION:
        n = low & ~VALUES
        end = pos + _RECORD.size + 8 * n
        if end + 8 > len(data) or struct.unpack_from("<Q", data, end)[0] != seq:
            return None
        if names is None:
            return _Found("v", seq, high, end + 8)  # its epoch is known, its names are not
        if n != len(names):
            return None
        values = struct.unpack_from(f"<{n}d", data, pos + _RECORD.size)
        return _Found("m", seq, ("m", high, dict(zip(names, values, strict=True))), end + 8)
    body = data[pos + _RECORD.size : pos + _RECORD.size + low]
    if low == 0 or low & VALUES or len(body) != low or zlib.crc32(body) != high:
        return None
    try:
        entry = marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        return None
    align = 8 if version == VERSION else 1
    end = pos + _RECORD.size + low + (-low % align)
    if seq == 0 and isinstance(entry, tuple) and entry[:1] == ("k",):
        return _Found("k", 0, tuple(entry[1]), end)
    return _Found("e", seq, entry, end)


def _epoch(entry: Any) -> int | None:
    if isinstance(entry, tuple) and len(entry) > 2 and entry[0] in ("m", "c"):
        epoch = entry[2] if entry[0] == "c" else entry[1]
        return epoch if isinstance(epoch, int) else None
    return None


def scan(path: str | os.PathLike[str], *, after: int) -> Replay:
    """Read a journal's intact records newer than ``after``, and say what is damaged.

    Values records come back as ``("m", epoch, metrics)`` entries; the schema is not
    returned. Reading ends at the end word. An unreadable stretch (flipped bytes, a torn
    page) does not end it: reading resumes at the next intact record newer than the
    last one read, and the records in between are reported lost. Records older than
    the last one read lie beyond the end, left over from before a start-over.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Replay([])
    if len(data) < _HEADER.size or not any(data[: _HEADER.size]):
        return Replay([])
    magic, version = _HEADER.unpack_from(data)
    header_bad = magic != MAGIC or version not in (1, VERSION)
    if header_bad:
        version = VERSION  # the only version written now: the best guess
    align = 8 if version == VERSION else 1
    out: list[tuple[int, Any]] = []
    pos = _HEADER.size
    names: tuple[str, ...] | None = None
    last: int | None = None  # the last sequence number read (or known lost)
    last_epoch: int | None = None
    stretches = bad_bytes = 0
    lost = 0
    unknown_from: int | None = None
    lost_seqs: list[int] = []
    lost_epochs: list[int] = []
    while pos + 8 <= len(data):
        if data[pos : pos + 8] == _END:
            break
        found = _record_at(data, pos, version, names)
        floor = after if last is None else max(last, after)
        if found is not None and (found.kind == "k" or last is None or found.seq == last + 1):
            bad = 0
        else:
            # Damage: find the next intact record newer than the last one read.
            if found is not None and found.kind != "k" and found.seq > floor:
                bad, next_at = 0, pos
            else:
                next_at = pos + align
                while next_at + _RECORD.size <= len(data):
                    found = _record_at(data, next_at, version, names)
                    if found is not None and found.kind != "k" and found.seq > floor:
                        break
                    next_at += align
                else:
                    found = None
                bad = next_at - pos
            if found is None:
                tail = data.find(_END, pos)
                stretches += 1
                bad_bytes += (len(data) if tail < 0 else tail) - pos
                unknown_from = floor + 1
                break
            if bad:
                stretches += 1
                bad_bytes += bad
            gap = range(floor + 1, found.seq)
            if gap:
                lost += len(gap)
                lost_seqs += [gap[0], gap[-1]]
                after_epoch = _epoch(found.entry) if found.kind != "v" else found.entry
                if last_epoch is not None and after_epoch is not None:
                    if after_epoch - last_epoch > 1:
                        lost_epochs += [last_epoch + 1, after_epoch - 1]
                    else:
                        lost_epochs += [min(last_epoch, after_epoch), max(last_epoch, after_epoch)]
                elif after_epoch is not None:
                    lost_epochs.append(after_epoch)
                elif last_epoch is not None:
                    lost_epochs.append(last_epoch)
            pos = next_at
        if found.kind == "k":
            names = found.entry
        elif found.kind == "v":
            # A values record whose schema is gone: its epoch is all that is left.
            if found.seq > after:
                lost += 1
                lost_seqs.append(found.seq)
                lost_epochs.append(found.entry)
            last, last_epoch = found.seq, found.entry
        else:
            if found.seq > after:
                out.append((found.seq, found.entry))
            last = found.seq
            last_epoch = _epoch(found.entry) if _epoch(found.entry) is not None else last_epoch
        pos = found.end
    damage = None
    if header_bad or lost or unknown_from is not None or stretches:
        seqs: tuple[int, int | None] | None = None
        if unknown_from is not None:
            seqs = (min([*lost_seqs, unknown_from]), None)
        elif lost_seqs:
            seqs = (min(lost_seqs), max(lost_seqs))
        if unknown_from is not None and last_epoch is not None:
            lost_epochs.append(last_epoch + 1)
        damage = JournalDamage(
            path=str(path),
            stretches=stretches,
            bad_bytes=bad_bytes,
            lost=None if unknown_from is not None else lost,
            seqs=seqs,
            epochs=(min(lost_epochs), max(lost_epochs)) if lost_epochs else None,
            header=header_bad,
        )
    return Replay(out, damage)


def replay(path: str | os.PathLike[str], *, after: int) -> list[tuple[int, Any]]:
    """The intact records of a journal newer than ``after``, as ``(seq, entry)`` pairs.

    See :func:`scan`; damage is logged here (``journal.damaged``), since the caller
    takes only the records.
    """
    result = scan(path, after=after)
    if result.damage is not None:
        log.warning("journal.damaged", path=str(path), report=result.damage.describe())
    return result.records
