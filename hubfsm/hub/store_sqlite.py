"""A durable store: records, metrics and replies in SQLite, weight files on disk.

Layout under the data directory::

    hub.sqlite3                  records, metrics, console output, weight digests, replies
    hub.lock                     held (shared) by every process that has the store open
    weights/<model>/last.pt      the last epoch checkpoint
    weights/<model>/best.pt      the final weights
    weights/.staging/            uploads being received (renamed into place when complete)

A weight file is streamed to a temporary file in 1 MiB chunks, hashed on the way, flushed
to disk and renamed over the old one, so a reader sees the old file or the new one, never
half of one. The rename waits for the commit of its digest's row, which also records
it as due (``renames``): a transaction rolled back renames nothing, and a process killed
between the commit and the rename has it done when the store opens again, so a file
and its row's digest always belong to one upload.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

from hubfsm.digest import chunks, sha256_chunks
from hubfsm.errors import HubfsmError
from hubfsm.hub.keys import KeyRecord
from hubfsm.hub.store import Source, WeightsKind
from hubfsm.hub.stored import (
    ModelRecord,
    Staged,
    StoredReply,
    UploadsInDatabase,
    WeightsInfo,
    key_of,
    model_of,
    page_query,
    record_text,
    reply_of,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    model_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
    arrived_at REAL, PRIMARY KEY (model_id, epoch));
CREATE TABLE IF NOT EXISTS weights (
    model_id TEXT NOT NULL, kind TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (model_id, kind));
CREATE TABLE IF NOT EXISTS replies (
    scope TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL,
    request TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS console (
    model_id TEXT NOT NULL, chunk_id INTEGER NOT NULL, lines INTEGER NOT NULL,
    content TEXT NOT NULL, PRIMARY KEY (model_id, chunk_id));
CREATE TABLE IF NOT EXISTS uploads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, model_id TEXT NOT NULL,
    run_id INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, staged TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS renames (
    model_id TEXT NOT NULL, kind TEXT NOT NULL, staged TEXT NOT NULL,
    PRIMARY KEY (model_id, kind));
CREATE TABLE IF NOT EXISTS keys (
    digest TEXT PRIMARY KEY, created_at REAL NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS models_created ON models (created_at, id);
"""


class SqliteStore:
    """Keeps the hub's state under ``data_dir``; a restart finds all of it again.

    One connection serves every thread, behind a lock: the hub's writes are short, and the
    slow part of an upload (receiving the file) happens in :meth:`stage_weights`, which
    touches no table.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self._weights_dir = self.data_dir / "weights"
        self._staging = self._weights_dir / ".staging"
        self._staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Owner-only: the database (its WAL and -shm files take its mode) and the folders.
        os.chmod(self.data_dir, 0o700)
        os.close(os.open(self.data_dir / "hub.sqlite3", os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.RLock()
        self._depth = 0
        # Renames of committed weight files, done once the outermost transaction commits,
        # and the staged files among them discarded meanwhile: deleted if it rolls back.
        self._after_commit: list[tuple[str, WeightsKind, str]] = []
        self._discard_later: list[str] = []
        self._delete_at_commit: list[str] = []
        # Files PUT to Platform upload URLs wait for their event in the database: a
        # restart in between must not lose what the hub answered 200 to.
        self.uploads = UploadsInDatabase(self, mark="?", handle="staged")
        # Autocommit mode: transactions are begun and ended explicitly below.
        self._db = sqlite3.connect(
            self.data_dir / "hub.sqlite3",
            check_same_thread=False,
            isolation_level=None,
            timeout=10.0,
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # Columns a data directory made by an earlier version lacks.
            _add_column(self._db, "replies", "request", "TEXT NOT NULL DEFAULT ''")
            _add_column(self._db, "metrics", "arrived_at", "REAL")
        except sqlite3.Error as error:
            # A full disk, a file that is no database: one line for the operator.
            self._db.close()
            path = self.data_dir / "hub.sqlite3"
            raise HubfsmError(f"cannot open the hub's database {path}: {error}") from None
        # Every open store holds a shared lock on the data directory. Only one that is
        # alone in it (no hub serving, no `hubfsm hub keys`) finishes what a killed process
        # left: another's renames and staged uploads may be under way. The renames a kill
        # cut off after their commit go first; what is left staged then belongs to
        # uploads cut short, never committed.
        self._alone_fd = os.open(self.data_dir / "hub.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if _alone(self._alone_fd):
            due = self._db.execute("SELECT model_id, kind, staged FROM renames").fetchall()
            for model_id, kind, staged in due:
                self._rename(str(model_id), kind, str(staged))
            waiting = {str(row[0]) for row in self._db.execute("SELECT staged FROM uploads")}
            for leftover in self._staging.iterdir():
                if str(leftover) not in waiting:
                    leftover.unlink(missing_ok=True)
        fcntl.flock(self._alone_fd, fcntl.LOCK_SH)  # waits only while another clears

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the writes of the block into one SQLite transaction."""
        with self._lock:
            outermost = self._depth == 0
            if outermost:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outermost:
                    self._renames_undone()
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outermost:
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    self._renames_undone()
                    raise
                due, self._after_commit, self._discard_later = self._after_commit, [], []
                gone, self._delete_at_commit = self._delete_at_commit, []
                for model_id, kind, staged in due:
                    self._rename(model_id, kind, staged)
                for path in gone:
                    Path(path).unlink(missing_ok=True)

    def _renames_undone(self) -> None:
        """The transaction did not commit: its files stay staged, the discarded ones go."""
        for path in self._discard_later:
            Path(path).unlink(missing_ok=True)
        self._after_commit, self._discard_later, self._delete_at_commit = [], [], []

    def _write(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        with self.transaction():
            return self._db.execute(sql, params)

    def claim(self, name: str) -> None:
        """Nothing to hold: the hub's lock serialises its requests."""

    def rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        """Run one statement (inside the open transaction, if any); the rows it returns."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def delete_after_commit(self, handles: Iterable[str]) -> None:
        """Delete these staged files once the transaction commits (at once outside one)."""
        with self._lock:
            if self._depth:
                self._delete_at_commit.extend(handles)
                return
        for path in handles:
            Path(path).unlink(missing_ok=True)

    def get_model(self, model_id: str) -> ModelRecord | None:
        """The model's record, or None."""
        rows = self.rows("SELECT record FROM models WHERE id = ?", (model_id,))
        return model_of(str(rows[0][0])) if rows else None

    def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model record."""
        self._write(
            "INSERT OR REPLACE INTO models (id, created_at, record) VALUES (?, ?, ?)",
            (record.id, record.created_at, record_text(record)),
        )

    def delete_model(self, model_id: str) -> bool:
        """Forget a model with its metrics and weights."""
        with self.transaction():
            found = self._db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount
            self._db.execute("DELETE FROM metrics WHERE model_id = ?", (model_id,))
            self._db.execute("DELETE FROM weights WHERE model_id = ?", (model_id,))
            self._db.execute("DELETE FROM console WHERE model_id = ?", (model_id,))
        shutil.rmtree(self._weights_dir / model_id, ignore_errors=True)
        return found > 0

    def list_models(self) -> list[ModelRecord]:
        """Every model, oldest first."""
        rows = self.rows("SELECT record FROM models ORDER BY created_at, id", ())
        return [model_of(str(row[0])) for row in rows]

    def page_models(
        self, limit: int, before: tuple[float, str] | None = None, owner: str | None = None
    ) -> list[ModelRecord]:
        """Up to ``limit`` models, newest first, older than ``before``, of ``owner`` if given."""
        sql, params = page_query(limit, before, owner, "json_extract(record, '$.owner')", "?")
        return [model_of(str(row[0])) for row in self.rows(sql, params)]

    def put_metrics(
        self, model_id: str, metrics: Mapping[int, str], at: float | None = None
    ) -> None:
        """Insert or replace each epoch's metrics (an epoch keeps its first time)."""
        with self.transaction():
            self._db.executemany(
                "INSERT INTO metrics (model_id, epoch, metrics, arrived_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (model_id, epoch) DO UPDATE SET metrics = excluded.metrics, "
                "arrived_at = coalesce(metrics.arrived_at, excluded.arrived_at)",
                [(model_id, epoch, text, at) for epoch, text in metrics.items()],
            )

    def get_metrics(self, model_id: str) -> list[tuple[int, str]]:
        """The model's ``(epoch, JSON text)`` pairs, sorted by epoch."""
        rows = self.rows(
            "SELECT epoch, metrics FROM metrics WHERE model_id = ? ORDER BY epoch", (model_id,)
        )
        return [(int(str(epoch)), str(text)) for epoch, text in rows]

    def metric_times(self, model_id: str) -> dict[int, float]:
        """When each epoch's metrics first came."""
        rows = self.rows(
            "SELECT epoch, arrived_at FROM metrics WHERE model_id = ? AND arrived_at IS NOT NULL",
            (model_id,),
        )
        return {int(str(epoch)): float(str(at)) for epoch, at in rows}

    def stage_weights(self, source: Source) -> Staged:
        """Stream ``source`` to a temporary file in 1 MiB chunks, hashing as it goes.

        A file already received into the staging folder (the server spools uploads there)
        is hashed where it is, not copied.
        """
        name = getattr(source, "name", None)
        if isinstance(name, str) and Path(name).parent == self._staging:
            return self._stage_in_place(source, name)  # type: ignore[arg-type]
        fd, path = tempfile.mkstemp(dir=self._staging, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                parts = [source] if isinstance(source, bytes) else chunks(source)
                sha, size = sha256_chunks(parts, copy_to=out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(path)
            raise
        return Staged(sha, size, path)

    def _stage_in_place(self, source: IO[bytes], path: str) -> Staged:
        source.flush()
        os.fsync(source.fileno())
        source.seek(0)
        sha, size = sha256_chunks(chunks(source))
        return Staged(sha, size, path)

    def commit_weights(self, model_id: str, kind: WeightsKind, staged: Staged) -> None:
        """Record the staged file's digest; it is renamed into place once that commits."""
        assert isinstance(staged.handle, str)
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO weights (model_id, kind, sha256, size) VALUES (?, ?, ?, ?)",
                (model_id, kind, staged.sha256, staged.size),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO renames (model_id, kind, staged) VALUES (?, ?, ?)",
                (model_id, kind, staged.handle),
            )
            self._after_commit.append((model_id, kind, staged.handle))

    def _rename(self, model_id: str, kind: str, staged: str) -> None:
        """Move a committed file into place (if still staged) and forget that it was due."""
        if os.path.exists(staged):
            folder = self._weights_dir / model_id
            folder.mkdir(exist_ok=True)
            os.replace(staged, folder / f"{kind}.pt")
            _fsync_dir(folder)
        self._db.execute(
            "DELETE FROM renames WHERE model_id = ? AND kind = ? AND staged = ?",
            (model_id, kind, staged),
        )

    def discard_weights(self, staged: Staged) -> None:
        """Delete the staged file, if it is still there and not committed."""
        assert isinstance(staged.handle, str)
        with self._lock:
            if any(staged.handle == due for _, _, due in self._after_commit):
                # Committed inside a transaction still open: it goes into place at its
                # commit, or is deleted if it rolls back.
                self._discard_later.append(staged.handle)
                return
        Path(staged.handle).unlink(missing_ok=True)

    def weights_info(self, model_id: str, kind: WeightsKind) -> WeightsInfo | None:
        """Digest and size of the model's ``kind`` file, or None."""
        rows = self.rows(
            "SELECT sha256, size FROM weights WHERE model_id = ? AND kind = ?", (model_id, kind)
        )
        return WeightsInfo(str(rows[0][0]), int(str(rows[0][1]))) if rows else None

    def open_weights(self, model_id: str, kind: WeightsKind) -> bytes | IO[bytes] | None:
        """An open binary stream of the model's ``kind`` file (the caller closes it), or None."""
        with self._lock:
            if self.weights_info(model_id, kind) is None:
                return None
            try:
                return open(self._weights_dir / model_id / f"{kind}.pt", "rb")  # noqa: SIM115
            except FileNotFoundError:
                return None

    def read_weights(
        self, model_id: str, kind: WeightsKind
    ) -> tuple[WeightsInfo, bytes | IO[bytes]] | None:
        """The ``kind`` file's digest and an open stream of it, read under one lock.

        A commit renames the new file into place under the same lock, so the row and the
        file opened belong to one upload (an open file keeps its content after a rename).
        """
        with self._lock:
            info = self.weights_info(model_id, kind)
            content = None if info is None else self.open_weights(model_id, kind)
        if info is None or content is None:
            return None
        return info, content

    def put_console(self, model_id: str, chunk_id: int, lines: int, text: str) -> bool:
        """Keep a console chunk unless one with that id is kept already."""
        cursor = self._write(
            "INSERT OR IGNORE INTO console (model_id, chunk_id, lines, content) "
            "VALUES (?, ?, ?, ?)",
            (model_id, chunk_id, lines, text),
        )
        return cursor.rowcount > 0

    def get_console(self, model_id: str) -> list[tuple[int, int, str]]:
        """The model's console chunks, in chunk order."""
        rows = self.rows(
            "SELECT chunk_id, lines, content FROM console WHERE model_id = ? ORDER BY chunk_id",
            (model_id,),
        )
        return [(int(str(c)), int(str(n)), str(t)) for c, n, t in rows]

    def get_reply(self, scope: str) -> StoredReply | None:
        """The reply remembered under ``scope``, or None."""
        rows = self.rows("SELECT status, body, request FROM replies WHERE scope = ?", (scope,))
        return reply_of(rows[0]) if rows else None

    def put_reply(self, scope: str, reply: StoredReply) -> None:
        """Remember a reply under ``scope``."""
        self._write(
            "INSERT OR REPLACE INTO replies (scope, status, body, request) VALUES (?, ?, ?, ?)",
            (scope, reply.status, json.dumps(reply.body), reply.request),
        )

    def get_key(self, digest: str) -> KeyRecord | None:
        """The key whose digest is ``digest``, or None."""
        rows = self.rows("SELECT record FROM keys WHERE digest = ?", (digest,))
        return key_of(str(rows[0][0])) if rows else None

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a key record."""
        self._write(
            "INSERT OR REPLACE INTO keys (digest, created_at, record) VALUES (?, ?, ?)",
            (record.digest, record.created_at, record_text(record)),
        )

    def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        rows = self.rows("SELECT record FROM keys ORDER BY created_at, digest", ())
        return [key_of(str(row[0])) for row in rows]

    def close(self) -> None:
        """Close the database connection, and let the data directory go."""
        with self._lock:
            self._db.close()
            if self._alone_fd >= 0:
                os.close(self._alone_fd)
                self._alone_fd = -1


def _alone(fd: int) -> bool:
    """Whether no other store has the data directory open (``fd`` its lock file)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (or locks unsupported: then nothing is cleared)
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open directories, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _add_column(db: sqlite3.Connection, table: str, column: str, declared: str) -> None:
    """Add ``column`` to ``table`` unless it has it (both are this module's constants)."""
    if column not in {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declared}")
