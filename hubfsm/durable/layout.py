"""Where an outbox root keeps what, who may read it, and how damage is described.

Shared by the outbox that writes a directory (:mod:`hubfsm.durable.outbox`) and the
survey that reads directories from outside (:mod:`hubfsm.durable.survey`), so neither
imports the other.

Beside the outboxes, the root keeps model records for offline runs of a hub model
(``<outbox root>/records/<model id>.json``, owner-only). Offline, a session reads nothing
from the hub, but training a hub model needs its record: the training arguments, the
dataset, the weights to start from. A session that loads a model online keeps it; an
offline session of the same model reads it back. An outbox itself is no place for it: an
outbox with nothing pending is removed. What is read back is untrusted like anything on
disk: it must be a JSON object naming this model, or it counts as absent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from hubfsm import env
from hubfsm.core.protocol import HUB_ID
from hubfsm.durable.journal_scan import scan
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger

log = get_logger("hubfsm")

#: Environment variable that overrides the default outbox root.
OUTBOX_ENV = env.OUTBOX
DATABASE = "outbox.sqlite3"
#: The trainer's journal in an outbox directory (written by :mod:`hubfsm.durable.journal`).
JOURNAL = "journal"
LOCK = "lock"
#: Every file hubfsm makes here is for this user's eyes only.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: The files an outbox directory holds, besides ``files/``: the only ones removed with it.
OWN_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", JOURNAL, LOCK)
#: Weight snapshots (see :meth:`Outbox.snapshot`) and the transient files beside them.
SNAPSHOT = re.compile(r"[A-Za-z0-9_]+-[0-9a-f]{24}\.pt|\.incoming-\d+|\.held-\d+-\d+")


@attrs.frozen
class HubRoots:
    """The hub an outbox's records are for: where ``hubfsm sync`` sends them.

    Attributes:
        api_root: The API root the session sent to.
        web_root: The web root of its model pages.
    """

    api_root: str
    web_root: str


def hub_of(db: sqlite3.Connection) -> HubRoots | None:
    """The hub an outbox database records, or None (made before hubs were recorded)."""
    rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('api_root', 'web_root')"))
    api_root, web_root = rows.get("api_root"), rows.get("web_root")
    if not isinstance(api_root, str) or not isinstance(web_root, str):
        return None
    return HubRoots(api_root, web_root)


class OutboxLockedError(HubfsmError):
    """Another process (or session) has this model's outbox open."""


#: Seconds an opener that finds an outbox locked waits to learn its holder: the holder
#: writes its PID into the lock file just after it takes the lock.
HOLDER_WAIT = 0.1


def lock_holder(fd: int, *, wait: float = HOLDER_WAIT) -> str:
    """The PID the lock file ``fd`` names, once it names a live process; else ``unknown``.

    An opener that comes between the holder's lock and its write reads nothing, or the
    PID of a process that held the lock before (two ``hubfsm sync`` started at once).
    """
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit() and _alive(int(text)):
            return text
        if time.monotonic() >= deadline:
            return "unknown"
        time.sleep(0.005)


def _alive(pid: int) -> bool:
    if pid <= 0:  # 0 and below name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OverflowError:
        return False
    return True


class OutboxDamaged(HubfsmError):
    """An outbox's database cannot be read: it is damaged, not merely empty.

    Attributes:
        directory: The outbox directory.
        problem: What is wrong with it.
        salvage: What in it can still be used.
    """

    def __init__(self, directory: Path, problem: str, salvage: str) -> None:
        self.directory = directory
        self.problem = problem
        self.salvage = salvage
        super().__init__(f"the outbox in {directory} is damaged: {problem}; {salvage}")


def private_dir(path: Path) -> None:
    """Make ``path`` and any missing parents owner-only; an existing parent is left alone."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIR_MODE)
    os.chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` owner-only if missing; tighten it if an older version left it open."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def inside(directory: Path, root: Path) -> bool:
    """True when ``directory`` is, once resolved, a direct child of ``root`` resolved."""
    if directory.is_symlink():
        return False
    return directory.resolve().parent == root.resolve()


def damage_of(error: sqlite3.Error) -> str:
    """What is wrong with an outbox whose database raised ``error``, in words."""
    return f"its database cannot be read ({error})"


def salvage(directory: Path) -> str:
    """What a damaged outbox still holds that is of use, in words."""
    files = directory / "files"
    weights = sorted(p.name for p in files.glob("*.pt")) if files.is_dir() else []
    journal = directory / JOURNAL
    parts = []
    if weights:
        parts.append(f"{len(weights)} weight snapshot(s) in {files} ({', '.join(weights[:4])})")
    if journal.exists():
        records = len(scan(journal, after=0).records)
        parts.append(f"{records} trainer record(s) in {journal}")
    if not parts:
        return "nothing in it can be salvaged"
    return "what can be salvaged: " + "; ".join(parts)


def default_root() -> Path:
    """Where outboxes live: ``HUBFSM_OUTBOX``, else the user's data directory."""
    root = env.outbox_root()
    return Path(root) if root else Path(platformdirs.user_data_dir("hubfsm")) / "outbox"


def check_database(db: sqlite3.Connection) -> None:
    """Raise :class:`sqlite3.DatabaseError` unless SQLite finds the database sound."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError("; ".join(map(str, problems[:3])))


RECORDS = "records"
#: A record bigger than this is not a model record (the hub's are a few kilobytes).
MAX_BYTES = 1 << 20


def record_path(model_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the record of ``model_id`` is kept under the outbox ``root``.

    Raises:
        ValueError: ``model_id`` is not a hub id.
    """
    if not HUB_ID.fullmatch(model_id):
        raise ValueError(f"{model_id[:24]!r} is not a model id")
    base = Path(root) if root is not None else default_root()
    return base / RECORDS / f"{model_id}.json"


def keep_record(
    model_id: str, record: Mapping[str, Any], root: str | os.PathLike[str] | None = None
) -> None:
    """Keep the record the hub sent, replacing an older one; a failure is only logged.

    Training goes on without it: only a later offline run would miss it.
    """
    try:
        path = record_path(model_id, root)
        private_dir(path.parent)
        data = json.dumps(dict(record), sort_keys=True).encode()
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except (OSError, TypeError, ValueError) as exc:
        log.warning("record.not_kept", model_id=model_id, error=f"{type(exc).__name__}: {exc}")


def kept_record(model_id: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The record kept for ``model_id``, or None when there is none that can be read."""
    try:
        path = record_path(model_id, root)
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        record = json.loads(data) if len(data) <= MAX_BYTES else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("record.unreadable", model_id=model_id, error=f"{type(exc).__name__}: {exc}")
        return None
    if not isinstance(record, dict) or record.get("id", model_id) != model_id:
        log.warning("record.unreadable", model_id=model_id, error="not this model's record")
        return None
    return record


#: SQLite's primary result codes for a full disk and an I/O error.
_SQLITE_FULL = 13
_SQLITE_IOERR = 10


def disk_error(error: sqlite3.OperationalError) -> OSError | None:
    """The ``OSError`` a full disk or an I/O error that SQLite met is; None for others."""
    code = (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF
    text = str(error)
    if not code:  # Python 3.10 gives no code: SQLite's own messages tell
        code = _SQLITE_FULL if "disk is full" in text else 0
        code = _SQLITE_IOERR if "disk I/O error" in text else code
    if code == _SQLITE_FULL:
        return OSError(errno.ENOSPC, f"the outbox database: {text}")
    if code == _SQLITE_IOERR:
        return OSError(errno.EIO, f"the outbox database: {text}")
    return None


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """Raise SQLite's full-disk and I/O errors as the ``OSError`` they are.

    A write that fails for the machine's sake is then one kind of error for every
    caller, whether SQLite or a file copy met it (ENOSPC or EIO), and never taken
    for a damaged database.
    """
    try:
        yield
    except sqlite3.OperationalError as error:
        mapped = disk_error(error)
        if mapped is None:
            raise
        raise mapped from error


def machine_fault(directory: Path, error: sqlite3.Error) -> str | None:
    """Why reading an outbox database failed for the machine's sake; None for damage.

    Reading a database in WAL mode needs its ``-shm`` file: a full disk, an I/O error
    or a directory that cannot be written keeps SQLite from making it.
    """
    if not isinstance(error, sqlite3.OperationalError):
        return None
    mapped = disk_error(error)
    if mapped is not None:
        return f"{mapped.strerror}; run this again once the disk has room or works"
    if not os.access(directory, os.W_OK):
        return f"{error}; its directory cannot be written (a read-only file system?)"
    return None


def roll_back(db: sqlite3.Connection) -> None:
    """End a failed transaction; SQLite may already have rolled it back (a full disk)."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
