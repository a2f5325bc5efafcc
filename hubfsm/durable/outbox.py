"""The durable outbox: everything the hub has not acknowledged yet, for one model.

One directory per model holds a SQLite database (WAL mode) and snapshots of weight
files. The worker writes the core's changes here before it sends the request that
depends on them, so a restarted process sends the same operations with the same keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import platformdirs

from hubfsm.core.changes import Change, Rejected, Saved
from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.errors import HubfsmError
from hubfsm.transport import FilePart, Request

#: Environment variable that overrides the default outbox root.
OUTBOX_ENV = "HUBFSM_OUTBOX"
DATABASE = "outbox.sqlite3"
CHUNK = 1 << 20


class OutboxLockedError(HubfsmError):
    """Another process (or session) has this model's outbox open."""


def default_root() -> Path:
    """Where outboxes live: ``HUBFSM_OUTBOX``, else the user's data directory."""
    env = os.environ.get(OUTBOX_ENV)
    return Path(env) if env else Path(platformdirs.user_data_dir("hubfsm")) / "outbox"


# -- the outbox ----------------------------------------------------------------------


@attrs.frozen
class FileStamp:
    """What a file looked like when the trainer handed it over (from ``os.stat``)."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileStamp:
        """Stat ``path`` now."""
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class Outbox:
    """One model's outbox, held exclusively by this process until :meth:`close`.

    Args:
        directory: The model's outbox directory (created if needed).
        model_id: The model it belongs to.

    Raises:
        OutboxLockedError: Another process or session holds it.
    """

    def __init__(self, directory: str | os.PathLike[str], model_id: str) -> None:
        self.directory = Path(directory)
        self.model_id = model_id
        self.files = self.directory / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._held = 0
        self._lock_fd = self._take_lock()
        try:
            connection = sqlite3.connect(
                self.directory / DATABASE, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self.db = OutboxDB(connection, model_id)
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def open(cls, model_id: str, root: str | os.PathLike[str] | None = None) -> Outbox:
        """Open the outbox of ``model_id`` under ``root`` (default: :func:`default_root`)."""
        base = Path(root) if root is not None else default_root()
        return cls(base / model_id, model_id)

    def __repr__(self) -> str:
        return f"Outbox({str(self.directory)!r})"

    def _take_lock(self) -> int:
        path = self.directory / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutboxLockedError(
                f"the outbox of model {self.model_id} in {self.directory} is in use by "
                f"another session (process {holder}); close that session first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
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
        """Write the core's changes, and how far the journal is consumed, in one transaction."""
        if self.db.apply(changes, journal_seq=journal_seq):
            self._collect_files()

    def snapshot(
        self, path: str | os.PathLike[str], *, name: str, stamp: FileStamp | None
    ) -> FilePart | None:
        """Copy a weight file into the outbox and describe the copy.

        The copy is byte-for-byte the file as it was when handed over: if ``stamp`` no
        longer matches the file before or after copying, the trainer has overwritten
        it since, and None is returned (a newer offer supersedes this one).
        """
        if stamp is not None and FileStamp.of(path) != stamp:
            return None
        tmp = self.files / f".incoming-{os.getpid()}"
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if stamp is not None and FileStamp.of(path) != stamp:
            tmp.unlink()
            return None
        sha = digest.hexdigest()
        final = self.files / f"{name.split('.')[0]}-{sha[:24]}.pt"
        os.replace(tmp, final)
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

    def _collect_files(self) -> None:
        """Delete snapshots that no operation or slot refers to any more."""
        saved = self.load()
        keep = {op.request.file.path for op in saved.ops if op.request.file is not None}
        # A rejected record's weights are kept with it, for the user to look at or discard.
        keep |= {r.request.file.path for r in saved.rejected if r.request.file is not None}
        for slot in (saved.checkpoint, saved.final):
            if slot is not None:
                keep.add(slot[1].path)
        for entry in self.files.iterdir():
            if str(entry) not in keep and not entry.name.startswith((".incoming", ".held")):
                entry.unlink(missing_ok=True)

    def close(self, *, remove: bool = False) -> None:
        """Close the database and let other sessions open this outbox.

        Args:
            remove: Also delete the directory, if nothing in it is pending.
        """
        if remove and self.load().empty:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.db.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


# -- looking at outboxes from outside ------------------------------------------------


@attrs.frozen
class OutboxInfo:
    """What one outbox holds, read without taking it."""

    directory: Path
    model_id: str
    pending: dict[str, int]
    in_use: bool
    #: The records the hub refused, described (kept until ``hubfsm discard``).
    rejected: tuple[str, ...] = ()
    #: The refusal that stopped the last session's sending, if it is not over.
    refusal: str | None = None


def find(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The outbox directories under ``root`` (or ``root`` itself if it is one)."""
    base = Path(root) if root is not None else default_root()
    if (base / DATABASE).exists():
        return [base]
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if (p / DATABASE).exists())


def _in_use(directory: Path) -> bool:
    try:
        fd = os.open(directory / "lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def inspect(directories: Iterable[Path]) -> list[OutboxInfo]:
    """Read what each outbox holds (read-only; safe while a session has it open)."""
    infos = []
    for directory in directories:
        uri = f"file:{directory / DATABASE}?mode=ro"
        db = sqlite3.connect(uri, uri=True)
        try:
            model_id = db.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()[0]
            metrics = db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
            in_ops = 0
            checkpoint = 0
            for channel, payload in db.execute("SELECT channel, payload FROM ops"):
                if channel == "metrics":
                    in_ops += len(json.loads(payload))
                elif channel == "checkpoint":
                    checkpoint = 1
            kinds = {k for (k,) in db.execute("SELECT kind FROM slots")}
            rejected, refusal = _refusals(db)
        finally:
            db.close()
        pending = {
            "metrics": metrics + in_ops,
            "checkpoint": int(checkpoint or "checkpoint" in kinds),
            "final": int("final" in kinds),
        }
        infos.append(
            OutboxInfo(directory, model_id, pending, _in_use(directory), rejected, refusal)
        )
    return infos


def _refusals(db: sqlite3.Connection) -> tuple[tuple[str, ...], str | None]:
    """The rejected records and the kept refusal of an outbox opened read-only."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    rejected: tuple[str, ...] = ()
    if "rejected" in tables:
        rows = db.execute(
            "SELECT channel, payload, status, reason FROM rejected ORDER BY seq"
        ).fetchall()
        rejected = tuple(
            Rejected(channel, Request("POST", ""), json.loads(payload), status, reason).describe()
            for channel, payload, status, reason in rows
        )
    row = db.execute("SELECT value FROM meta WHERE key = 'refusal'").fetchone()
    return rejected, None if row is None else str(row[0])
