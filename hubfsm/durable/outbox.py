"""The durable outbox: everything the hub has not acknowledged yet, for one model.

One directory per model holds a SQLite database (WAL mode) and snapshots of weight
files. The worker writes the core's changes here before it sends the request that
depends on them, so a restarted process sends the same operations with the same keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import attrs

from hubfsm.core.identifier import OUTBOX_ID
from hubfsm.core.values import Change, FileStamp, Saved
from hubfsm.digest import chunks, sha256_chunks, sha256_of
from hubfsm.durable.handover import as_handed_over, stamp_of
from hubfsm.durable.layout import (
    DATABASE,
    DIR_MODE,
    FILE_MODE,
    LOCK,
    OWN_FILES,
    SNAPSHOT,
    HubRoots,
    OutboxDamaged,
    OutboxLockedError,
    check_database,
    damage_of,
    default_root,
    disk_errors,
    inside,
    lock_holder,
    log,
    private_dir,
    private_file,
    salvage,
)
from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.transport import FilePart


class Outbox:
    """One model's outbox, held exclusively by this process until :meth:`close`.

    Everything it creates is owner-only: directories 0700, files 0600 (the database's
    WAL and shared-memory files take the database's mode).

    Args:
        directory: The model's outbox directory (created if needed), named by its id.
        model_id: The model it belongs to: a hub id, never a path.
        root: The outbox root ``directory`` must lie in; default its parent.
        hub: The hub its records are for, recorded when the outbox is made (see
            :class:`~hubfsm.durable.outbox_db.OutboxDB`).

    Raises:
        ValueError: ``model_id`` is not a hub id, or ``directory`` is not the root's
            entry of that name.
        OutboxLockedError: Another process or session holds it.
        OutboxDamaged: Its database cannot be read.
    """

    #: The last write was refused (a full disk): the next one first gives space back.
    _refused = False

    def __init__(
        self,
        directory: str | os.PathLike[str],
        model_id: str,
        *,
        root: str | os.PathLike[str] | None = None,
        hub: HubRoots | None = None,
    ) -> None:
        directory = Path(directory)
        if not OUTBOX_ID.fullmatch(model_id):
            raise ValueError(f"{model_id[:24]!r} is not a model id; it cannot name an outbox")
        self.root = Path(root) if root is not None else directory.parent
        if directory.name != model_id or Path(os.path.abspath(directory)).parent != Path(
            os.path.abspath(self.root)
        ):
            raise ValueError(f"an outbox must be the entry {model_id} of its root {self.root}")
        self.directory = directory
        self.model_id = model_id
        self.files = self.directory / "files"
        private_dir(self.files)
        os.chmod(self.directory, DIR_MODE)
        self._held = 0
        self._lock_fd = self._take_lock()
        try:
            database = self.directory / DATABASE
            # SQLite gives the WAL and -shm files the database's mode, so it is set first.
            private_file(database)
            for extra in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{database}{extra}", FILE_MODE)
            connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
            try:
                # A full disk or an I/O error is an OSError, never taken for damage.
                with disk_errors():
                    check_database(connection)
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute("PRAGMA synchronous=NORMAL")
                    self.db = OutboxDB(connection, model_id, hub=hub)
                    try:
                        self.db.load()
                    except (ValueError, TypeError, KeyError, AssertionError):
                        # A record that does not read back is kept aside, and the rest
                        # goes on; if the outbox still does not read, it is damaged.
                        self.db.set_aside_unreadable()
                        self.db.load()
                    # Records name their snapshots by path: an outbox moved to another
                    # directory (or machine) names them where they are now, before a
                    # write's collection would take them for files nothing refers to.
                    self.db.check_files(self._here)
                    # Snapshots a killed process never recorded go before the journal's
                    # offers, taken back, need room for copies of their own.
                    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                        self._collect_files(taken_back=True)
            except OSError:
                connection.close()
                raise
            except sqlite3.DatabaseError as error:
                connection.close()
                raise OutboxDamaged(
                    self.directory, damage_of(error), salvage(self.directory)
                ) from None
            except (ValueError, TypeError, KeyError, AssertionError) as error:
                connection.close()
                problem = f"its records cannot be read ({type(error).__name__})"
                raise OutboxDamaged(self.directory, problem, salvage(self.directory)) from None
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def open(
        cls,
        model_id: str,
        root: str | os.PathLike[str] | None = None,
        *,
        hub: HubRoots | None = None,
    ) -> Outbox:
        """Open the outbox of ``model_id`` under ``root`` (default: :func:`default_root`).

        Raises:
            ValueError: ``model_id`` is not a model id (8 to 64 ASCII letters and digits).
        """
        if not OUTBOX_ID.fullmatch(model_id):
            raise ValueError(f"{model_id[:24]!r} is not a model id; it cannot name an outbox")
        base = Path(root) if root is not None else default_root()
        return cls(base / model_id, model_id, root=base, hub=hub)

    def __repr__(self) -> str:
        return f"Outbox({str(self.directory)!r})"

    def _take_lock(self) -> int:
        path = self.directory / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            raise OutboxLockedError(
                f"the outbox of model {self.model_id} in {self.directory} is in use by "
                f"another session (process {holder}); close that session first"
            ) from None
        # Written over, then cut: the file is never empty while a waiting opener reads it.
        pid = str(os.getpid()).encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        return fd

    # -- reading -----------------------------------------------------------------

    @property
    def journal_seq(self) -> int:
        """The last trainer-journal record whose event is in the outbox."""
        return self.db.journal_seq

    def load(self) -> Saved:
        """Everything pending, in the order it must go out."""
        return self.db.load()

    def apply(self, changes: Sequence[Change], *, journal_seq: int | None = None) -> None:
        """Write the core's changes, and how far the journal is consumed, in one transaction.

        Raises:
            OSError: The disk is full or failed: nothing of the call is written.
        """
        if self._refused:
            # SQLite moves its write-ahead log into the database only after a write that
            # succeeded: on a small disk the log itself may be what fills it. While
            # writes are refused, the log is given back before and after each.
            self.db.reclaim()
        try:
            touched = self.db.apply(changes, journal_seq=journal_seq)
        except OSError:
            self._refused = True
            self.db.reclaim()
            raise
        if self._refused:
            self._refused = False
            self.db.reclaim()
        if touched:
            # Written: a snapshot that could not be deleted now goes at the next collection.
            with contextlib.suppress(OSError):
                self._collect_files()

    def _here(self, file: FilePart, pending: bool) -> FilePart | str:
        """``file`` named where this outbox keeps it, if it is one of its snapshots."""
        name = os.path.basename(file.path)
        here = str(self.files / name)
        if here == file.path or not SNAPSHOT.fullmatch(name):
            return file
        return attrs.evolve(file, path=here)

    def check_weights(self) -> int:
        """Keep aside every pending weight record whose snapshot is not what was handed over.

        A snapshot deleted, cut short or changed on disk (a bad disk, a hand) would
        otherwise be retried until a timeout at every sync, or be uploaded: final weights
        nobody handed over, on a model then marked trained for good. Reads each pending
        snapshot once (at most a checkpoint and the final weights). Returns how many
        records were kept aside.
        """
        return self.db.check_files(as_handed_over)

    def snapshot(
        self, path: str | os.PathLike[str], *, name: str, stamp: FileStamp | None
    ) -> FilePart | None:
        """Copy a weight file into the outbox and describe the copy.

        The copy is byte-for-byte the file as it was when handed over: if ``stamp`` no
        longer matches the file before or after copying, or the file is gone (a newer
        offer released its held link), the trainer has moved on and None is returned
        (a newer offer supersedes this one).

        When the copy cannot be written (a full disk, an I/O error), the partial copy
        is removed; if ``path`` is a link this outbox holds (see :meth:`hold`), that
        link becomes the snapshot, since its content is on disk already.

        Raises:
            OSError: The copy failed and there is no held link to keep instead.
        """
        try:
            if stamp is not None and stamp_of(path) != stamp:
                return None
            return self._copy(path, name=name, stamp=stamp)
        except FileNotFoundError:
            return None
        except OSError:
            if not self._holds(path):
                raise
            return self._adopt(path, name=name, stamp=stamp)

    def _copy(
        self, path: str | os.PathLike[str], *, name: str, stamp: FileStamp | None
    ) -> FilePart | None:
        tmp = self.files / f".incoming-{os.getpid()}"
        try:
            with open(path, "rb") as src:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                with open(fd, "wb") as dst:
                    sha, size = sha256_chunks(chunks(src), copy_to=dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            if stamp is not None and stamp_of(path) != stamp:
                tmp.unlink()
                return None
            final = self.files / f"{name.split('.')[0]}-{sha[:24]}.pt"
            os.replace(tmp, final)
        except BaseException:
            # A partial copy would hold the disk's free space for good.
            tmp.unlink(missing_ok=True)
            raise
        return FilePart(name=name, path=str(final), size=size, sha256=sha)

    def _holds(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` is one of this outbox's held links."""
        link = Path(path)
        return link.parent == self.files and link.name.startswith(".held-")

    def _adopt(
        self, link: str | os.PathLike[str], *, name: str, stamp: FileStamp | None
    ) -> FilePart | None:
        """Make a held link's file the snapshot: a second name, so it needs no free space.

        It shares the trainer's file: a trainer that rewrites that file in place (rather
        than writing a new one and renaming it) changes this snapshot too, and its upload
        then carries the newer bytes (a changed size is refused at upload). A copy could
        not be had, and an upload of newer weights loses nothing.
        """
        try:
            if stamp is not None and stamp_of(link) != stamp:
                return None
            sha, size = sha256_of(link)
            if stamp is not None and stamp_of(link) != stamp:
                return None
            final = self.files / f"{name.split('.')[0]}-{sha[:24]}.pt"
            # A second name, not a rename: the link stays until the outbox records the
            # snapshot, so a kill before that leaves recovery the link the journal names.
            with contextlib.suppress(FileExistsError):  # the same bytes, kept already
                os.link(link, final)
        except FileNotFoundError:
            return None
        log.warning("snapshot.held_kept", model_id=self.model_id, file=final.name)
        return FilePart(name=name, path=str(final), size=size, sha256=sha)

    def hold(self, path: str | os.PathLike[str]) -> str | None:
        """Keep the file's current content reachable with a hard link; O(1), for the call.

        A trainer that writes its weights to a new file and renames it over the old one
        (the safe way) then cannot take the handed-over content away before the
        snapshot. Returns the link's path, or None where links are not possible (another
        file system); the snapshot's stamp check still guards an in-place rewrite.
        """
        self._held += 1
        link = self.files / f".held-{os.getpid()}-{self._held}"
        try:
            os.link(path, link)
        except OSError:
            return None
        return str(link)

    def release(self, link: str) -> None:
        """Let go of a link :meth:`hold` made, if it is still there (anything else stays)."""
        if self._holds(link):
            with contextlib.suppress(OSError):
                os.unlink(link)

    def _collect_files(self, *, taken_back: bool = False) -> None:
        """Delete snapshots no record names (``taken_back``: a dead process's copies too)."""
        keep = self.db.referenced_files()
        partial = () if taken_back else (".incoming",)
        for entry in self.files.iterdir():
            name = entry.name
            if str(entry) in keep or name.startswith((".held", *partial)):
                continue
            if SNAPSHOT.fullmatch(name) and not entry.is_symlink() and entry.is_file():
                entry.unlink(missing_ok=True)

    def close(self, *, remove: bool = False) -> None:
        """Close the database and let other sessions open this outbox.

        Args:
            remove: Also delete the directory, if nothing in it is pending. Only the
                files an outbox makes are deleted, and only inside its root (checked on
                the resolved path); the directory stays if anything else is in it.
        """
        empty = remove and self.load().empty
        self.db.close()
        if empty:
            self._remove()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def discard(self) -> None:
        """Delete everything this outbox holds, pending or rejected, and close it.

        For ``hubfsm discard``: only the files an outbox makes are deleted, and only
        inside its root, as :meth:`close` does for an empty one.
        """
        self.db.close()
        self._remove()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def drop_rejected(self) -> int:
        """Forget the records the hub rejected, and their weights; how many went."""
        count = self.db.drop_rejected()
        self._collect_files()
        return count

    def _remove(self) -> None:
        directory = self.directory
        if not inside(directory, self.root) or directory.resolve().name != self.model_id:
            log.warning("outbox.not_removed", directory=str(directory), root=str(self.root))
            return
        if self.files.is_dir() and not self.files.is_symlink():
            for entry in self.files.iterdir():
                if SNAPSHOT.fullmatch(entry.name) and not entry.is_symlink():
                    entry.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.files.rmdir()
        for name in OWN_FILES:
            (directory / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()  # not empty: something else is in it, and it stays


__all__ = ["Outbox"]
