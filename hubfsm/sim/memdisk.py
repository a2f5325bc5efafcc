"""The simulator's disk: outboxes whose database and weight snapshots live in memory.

Thousands of simulated runs cannot each afford a SQLite file and a copy of every
checkpoint. A :class:`MemoryOutbox` runs the outbox's own code (the same schema, SQL,
encoding, recovery and file collection) on an in-memory database, and keeps snapshots
in a dict; the trainer's journal stays a real memory-mapped file. The disk outlives a
simulated process, as a real one does, and :meth:`MemoryDisk.dump` writes it out as
real outboxes when ``hubfsm sync`` is to read them.

With a :class:`~hubfsm.sim.machine.Machine` the disk fails as a real one does: an
outbox write fails whole (SQLite rolls it back), and a snapshot fails part way through
its copy into a temporary file, which the outbox must remove.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hubfsm.core.values import Change, FileStamp
from hubfsm.durable.layout import DATABASE, OutboxLockedError
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.transport import FilePart

if TYPE_CHECKING:
    from hubfsm.sim.machine import Machine

#: Bytes asked of each read of a snapshot: under the allocator's threshold for a mapping
#: of its own, so a read of a small simulated checkpoint makes no mmap, mremap and
#: munmap calls for its buffer.
_CHUNK = 1 << 16


class MemoryDisk:
    """The outboxes of one simulated machine, kept in memory across its processes.

    Args:
        machine: The machine faults its writes and snapshots meet, if any.
        keep_temp: Planted bug: a snapshot that fails leaves its temporary file behind.
    """

    def __init__(self, machine: Machine | None = None, *, keep_temp: bool = False) -> None:
        self.databases: dict[Path, OutboxDB] = {}
        self.files: dict[str, bytes] = {}
        self.locked: set[Path] = set()
        self.machine = machine
        self.keep_temp = keep_temp

    def temporary_files(self) -> list[str]:
        """Temporary files left in any outbox (a snapshot's copy that never finished)."""
        return sorted(p for p in self.files if os.path.basename(p).startswith(".incoming"))

    def open_outbox(self, model_id: str, root: str | os.PathLike[str] | None) -> Outbox:
        """Open the outbox of ``model_id`` under ``root`` (the factory's outbox opener)."""
        assert root is not None, "a simulated outbox needs its root"
        return MemoryOutbox(self, Path(root), model_id)

    def read(self, path: str) -> bytes:
        """A file's bytes: a snapshot kept here, else the file on disk."""
        data = self.files.get(path)
        return data if data is not None else Path(path).read_bytes()

    def dump(self) -> None:
        """Write every outbox out as a real one (database and snapshots), for ``hubfsm sync``."""
        for directory, db in self.databases.items():
            (directory / "files").mkdir(mode=0o700, parents=True, exist_ok=True)
            db.copy_to(directory / DATABASE)
        for path, data in self.files.items():
            Path(path).write_bytes(data)


class MemoryOutbox(Outbox):
    """An :class:`Outbox` on a :class:`MemoryDisk`: no database file, no snapshot copies."""

    def __init__(self, disk: MemoryDisk, root: Path, model_id: str) -> None:
        # Not Outbox.__init__: it would open a database file and take a lock file.
        directory = root / model_id
        if directory in disk.locked:
            raise OutboxLockedError(f"the outbox of model {model_id} is in use")
        self.root = root
        self.directory = directory
        self.model_id = model_id
        self.files = directory / "files"
        self._files_prefix = f"{self.files}{os.sep}"
        self._held = 0
        self._disk = disk
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # the journal's home
        db = disk.databases.get(directory)
        if db is None:
            db = disk.databases[directory] = OutboxDB.in_memory(model_id)
        self.db = db
        disk.locked.add(directory)
        self._collect_files(taken_back=True)  # as Outbox.__init__ does

    def apply(self, changes: Sequence[Change], *, journal_seq: int | None = None) -> None:
        """Write as :meth:`Outbox.apply` does; on a failing disk, fail whole, writing nothing."""
        machine = self._disk.machine
        if machine is not None:
            machine.before_write()
        super().apply(changes, journal_seq=journal_seq)

    def snapshot(
        self, path: str | os.PathLike[str], *, name: str, stamp: FileStamp | None
    ) -> FilePart | None:
        """Keep the file's bytes as the outbox's snapshot, if it is still what ``stamp`` says.

        On a failing disk the copy into the temporary file stops part way with the
        disk's error; the partial file is removed (unless the planted bug keeps it).
        """
        # Plain descriptors and strings: pathlib's objects cost more than reading the file.
        fd = os.open(path, os.O_RDONLY)
        try:
            if stamp is not None:
                # The stamp of the file opened (fstat: no second walk of the path), compared
                # field by field rather than through a FileStamp built for the comparison.
                st = os.fstat(fd)
                if (st.st_size, st.st_mtime_ns, st.st_ino) != (
                    stamp.size,
                    stamp.mtime_ns,
                    stamp.inode,
                ):
                    return None
            # A simulated checkpoint is far under a chunk: one read takes it whole, and a
            # short read of a regular file is its end.
            data = os.read(fd, _CHUNK)
            if len(data) == _CHUNK:
                data += b"".join(iter(functools.partial(os.read, fd, _CHUNK), b""))
        finally:
            os.close(fd)
        machine = self._disk.machine
        if machine is not None:
            error = machine.snapshot_error()
            if error is not None:
                # A fixed name, not the pid: a seed must leave the same trace in any process.
                tmp = f"{self._files_prefix}.incoming-0"
                self._disk.files[tmp] = data[: len(data) // 2]
                if self._disk.keep_temp:
                    machine.leaked = True  # it holds every byte that was free
                else:
                    del self._disk.files[tmp]
                raise error
        sha = hashlib.sha256(data).hexdigest()
        final = f"{self._files_prefix}{name.split('.')[0]}-{sha[:24]}.pt"
        self._disk.files[final] = data
        return FilePart(name=name, path=final, size=len(data), sha256=sha)

    def check_weights(self) -> int:
        """As :meth:`Outbox.check_weights` does, on the simulated disk's files."""
        files = self._disk.files

        def as_handed_over(file: FilePart, pending: bool) -> FilePart | str:
            data = files.get(file.path) if pending else b""
            if data is None:
                return f"its weights file {file.path} is missing"
            if pending and (len(data), hashlib.sha256(data).hexdigest()) != (
                file.size,
                file.sha256,
            ):
                return f"its weights file {file.path} is not the one handed over"
            return file

        return self.db.check_files(as_handed_over)

    def hold(self, path: str | os.PathLike[str]) -> str | None:
        """No link is needed: the simulated trainer never deletes or replaces a file it offered.

        It writes last.pt again in place, which changes a link's bytes too.
        """
        return None

    def _collect_files(self, *, taken_back: bool = False) -> None:
        keep = self.db.referenced_files()
        prefix = f"{self.files}{os.sep}"
        files = self._disk.files
        # Temporary files are not snapshots: the outbox collects only what it finished
        # (taken back, a dead process's copies too; held links wait for the journal).
        for path in [
            p
            for p in files
            if p.startswith(prefix)
            and p not in keep
            and not p[len(prefix) :].startswith(".held" if taken_back else ".")
        ]:
            del files[path]

    def close(self, *, remove: bool = False) -> None:
        """Let other sessions open this outbox; ``remove`` forgets it if nothing is pending."""
        if remove and self.load().empty:
            self._forget()
        self._disk.locked.discard(self.directory)

    def discard(self) -> None:
        """Forget everything this outbox holds, pending or rejected, and close it.

        As :meth:`Outbox.discard` does on a real disk (a session whose disk lagged
        the hub's acknowledgments discards it at close).
        """
        self._forget()
        self._disk.locked.discard(self.directory)

    def _forget(self) -> None:
        disk = self._disk
        disk.databases.pop(self.directory, None)
        prefix = f"{self.files}{os.sep}"
        for path in [p for p in disk.files if p.startswith(prefix)]:
            del disk.files[path]
        shutil.rmtree(self.directory, ignore_errors=True)
