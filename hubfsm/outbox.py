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
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from hubfsm.changes import Change, MetricsQueued, OpClosed, OpOpened, Saved
from hubfsm.errors import HubfsmError
from hubfsm.transport import FilePart, Request

#: Environment variable that overrides the default outbox root.
OUTBOX_ENV = "HUBFSM_OUTBOX"
DATABASE = "outbox.sqlite3"
CHUNK = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (epoch INTEGER PRIMARY KEY, encoded TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    request TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS slots (kind TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxLockedError(HubfsmError):
    """Another process (or session) has this model's outbox open."""


def default_root() -> Path:
    """Where outboxes live: ``HUBFSM_OUTBOX``, else the user's data directory."""
    env = os.environ.get(OUTBOX_ENV)
    return Path(env) if env else Path(platformdirs.user_data_dir("hubfsm")) / "outbox"


# -- values to and from JSON ---------------------------------------------------------


def _file_to_json(file: FilePart | None) -> dict[str, Any] | None:
    return None if file is None else attrs.asdict(file)


def _file_from_json(data: dict[str, Any] | None) -> FilePart | None:
    return None if data is None else FilePart(**data)


def _request_to_json(request: Request) -> str:
    return json.dumps(
        {
            "method": request.method,
            "path": request.path,
            "json": request.json,
            "fields": request.fields,
            "file": _file_to_json(request.file),
            "idempotency_key": request.idempotency_key,
        }
    )


def _request_from_json(text: str) -> Request:
    data = json.loads(text)
    data["file"] = _file_from_json(data["file"])
    return Request(**data)


def _slot_to_json(value: tuple[int, FilePart, Any]) -> str:
    epoch, file, extra = value
    return json.dumps({"epoch": epoch, "file": _file_to_json(file), "extra": extra})


def _slot_from_json(text: str) -> tuple[int, FilePart, Any]:
    data = json.loads(text)
    file = _file_from_json(data["file"])
    assert file is not None
    return data["epoch"], file, data["extra"]


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
        self._lock_fd = self._take_lock()
        try:
            self._db = sqlite3.connect(
                self.directory / DATABASE, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('model_id', ?), ('journal_seq', '0'), "
                    "('created', ?)",
                    (model_id, repr(time.time())),
                )
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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- reading -----------------------------------------------------------------

    @property
    def journal_seq(self) -> int:
        """The last trainer-journal record whose event is in the outbox."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'journal_seq'").fetchone()
        return int(row[0])

    def load(self) -> Saved:
        """Everything pending, in the order it must go out."""
        db = self._db
        ops = tuple(
            OpOpened(channel, _request_from_json(request), json.loads(payload))
            for channel, request, payload in db.execute(
                "SELECT channel, request, payload FROM ops ORDER BY seq"
            )
        )
        metrics = tuple(db.execute("SELECT epoch, encoded FROM metrics ORDER BY epoch"))
        slots = dict(db.execute("SELECT kind, value FROM slots"))
        checkpoint = _slot_from_json(slots["checkpoint"]) if "checkpoint" in slots else None
        final = _slot_from_json(slots["final"]) if "final" in slots else None
        return Saved(ops=ops, metrics=metrics, checkpoint=checkpoint, final=final)

    # -- writing -----------------------------------------------------------------

    def apply(self, changes: Sequence[Change], *, journal_seq: int | None = None) -> None:
        """Write the core's changes, and how far the journal is consumed, in one transaction."""
        if not changes and journal_seq is None:
            return
        files_touched = False
        with self._transaction() as db:
            for change in changes:
                if isinstance(change, MetricsQueued):
                    db.execute(
                        "INSERT OR REPLACE INTO metrics VALUES (?, ?)",
                        (change.epoch, change.encoded),
                    )
                elif isinstance(change, OpOpened):
                    payload = change.payload
                    if change.channel == "metrics":
                        db.executemany(
                            "DELETE FROM metrics WHERE epoch = ?", [(e,) for e in payload]
                        )
                    db.execute(
                        "INSERT OR IGNORE INTO ops (key, channel, request, payload) "
                        "VALUES (?, ?, ?, ?)",
                        (
                            change.key,
                            change.channel,
                            _request_to_json(change.request),
                            json.dumps(list(payload) if change.channel == "metrics" else payload),
                        ),
                    )
                elif isinstance(change, OpClosed):
                    db.execute("DELETE FROM ops WHERE key = ?", (change.key,))
                    files_touched = True
                else:
                    if change.value is None:
                        db.execute("DELETE FROM slots WHERE kind = ?", (change.kind,))
                        files_touched = True
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO slots VALUES (?, ?)",
                            (change.kind, _slot_to_json(change.value)),
                        )
            if journal_seq is not None:
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'journal_seq'", (str(journal_seq),)
                )
        if files_touched:
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

    def _collect_files(self) -> None:
        """Delete snapshots that no operation or slot refers to any more."""
        saved = self.load()
        keep = {op.request.file.path for op in saved.ops if op.request.file is not None}
        for slot in (saved.checkpoint, saved.final):
            if slot is not None:
                keep.add(slot[1].path)
        for entry in self.files.iterdir():
            if str(entry) not in keep and not entry.name.startswith(".incoming"):
                entry.unlink(missing_ok=True)

    def close(self, *, remove: bool = False) -> None:
        """Close the database and let other sessions open this outbox.

        Args:
            remove: Also delete the directory, if nothing in it is pending.
        """
        if remove and self.load().empty:
            shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
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
        finally:
            db.close()
        pending = {
            "metrics": metrics + in_ops,
            "checkpoint": int(checkpoint or "checkpoint" in kinds),
            "final": int("final" in kinds),
        }
        infos.append(OutboxInfo(directory, model_id, pending, _in_use(directory)))
    return infos
