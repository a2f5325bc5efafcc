"""Reading a journal back: the intact records newer than the outbox's, and the damage.

A journal is read after a crash, by the next session or by ``hubfsm status``; a record
cut short or a torn page is found here, and reported as :class:`JournalDamage`.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from typing import Any

import attrs

from hubfsm.core.values import Event
from hubfsm.durable.journal_format import (
    END,
    HEADER,
    MAGIC,
    RECORD,
    VALUES,
    VERSION,
    event_of,
)
from hubfsm.logs import get_logger

log = get_logger("hubfsm")

#: Bytes of a journal read first (see :func:`scan`): a few pages of records and more.
_FIRST_READ = 1 << 16


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
    if pos + RECORD.size > len(data):
        return None
    low, high, seq = RECORD.unpack_from(data, pos)
    if low & VALUES and version > 1:
        n = low & ~VALUES
        # Version 2 held raw doubles; later ones a marshal list of n floats.
        size = 8 * n if version == 2 else 5 + 9 * n
        start = pos + RECORD.size
        end = start + size + (-size % 8)
        if end + 8 > len(data) or struct.unpack_from("<Q", data, end)[0] != seq:
            return None
        if names is None:
            return _Found("v", seq, high, end + 8)  # its epoch is known, its names are not
        if n != len(names):
            return None
        values = _values(data[start : start + size], n, version)
        if values is None:
            return None
        return _Found("m", seq, ("m", high, dict(zip(names, values, strict=True))), end + 8)
    body = data[pos + RECORD.size : pos + RECORD.size + low]
    if low == 0 or low & VALUES or len(body) != low or zlib.crc32(body) != high:
        return None
    try:
        entry = marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        return None
    align = 1 if version == 1 else 8
    end = pos + RECORD.size + low + (-low % align)
    if seq == 0 and isinstance(entry, tuple) and entry[:1] == ("k",):
        return _Found("k", 0, tuple(entry[1]), end)
    return _Found("e", seq, entry, end)


def _values(body: bytes, n: int, version: int) -> tuple[float, ...] | list[float] | None:
    """The ``n`` floats of a values record's body, or None if they are not intact."""
    if version == 2:
        return struct.unpack(f"<{n}d", body)
    if body[5::9] != b"g" * n:  # a float's tag every 9 bytes, or not a list of floats
        return None
    try:
        values = marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        return None
    return values if isinstance(values, list) and len(values) == n else None


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
    # A journal is allocated a mebibyte at least, and its records most often fill a few
    # pages of it: its first part is read, and the rest only when the records do not end
    # within that part (at the end word, nothing damaged). Reading the whole file every
    # time copied every byte of it.
    try:
        with open(path, "rb") as file:
            data = file.read(_FIRST_READ)
            if len(data) == _FIRST_READ:
                found = _scan(path, data, after, whole=False)
                if found is not None:
                    return found
                data += file.read()
    except FileNotFoundError:
        return Replay([])
    found = _scan(path, data, after, whole=True)
    assert found is not None  # a scan of the whole file always says what it found
    return found


def _scan(path: str | os.PathLike[str], data: bytes, after: int, *, whole: bool) -> Replay | None:
    """:func:`scan` of the file's first bytes ``data`` (all of them if ``whole``).

    Of a part (not ``whole``), None unless the records end in it at the end word with
    nothing damaged: only then does nothing past the part change what is found.
    """
    if len(data) < HEADER.size or not any(data[: HEADER.size]):
        return Replay([])
    magic, version = HEADER.unpack_from(data)
    header_bad = magic != MAGIC or version not in (1, 2, VERSION)
    if header_bad:
        version = VERSION  # the only version written now: the best guess
    align = 1 if version == 1 else 8
    out: list[tuple[int, Any]] = []
    pos = HEADER.size
    names: tuple[str, ...] | None = None
    last: int | None = None  # the last sequence number read (or known lost)
    last_epoch: int | None = None
    stretches = bad_bytes = 0
    lost = 0
    unknown_from: int | None = None
    lost_seqs: list[int] = []
    lost_epochs: list[int] = []
    ended = False
    while pos + 8 <= len(data):
        if data[pos : pos + 8] == END:
            ended = True
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
                while next_at + RECORD.size <= len(data):
                    found = _record_at(data, next_at, version, names)
                    if found is not None and found.kind != "k" and found.seq > floor:
                        break
                    next_at += align
                else:
                    found = None
                bad = next_at - pos
            if found is None:
                tail = data.find(END, pos)
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
    damaged = bool(header_bad or lost or unknown_from is not None or stretches)
    if not whole and (damaged or not ended):
        return None  # what is past the part may change what is found: read it all
    damage = None
    if damaged:
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
