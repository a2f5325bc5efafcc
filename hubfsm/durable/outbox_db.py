"""The outbox's records in SQLite: pending metrics, operations and weight slots.

Only SQL lives here; the directory, its lock and the weight snapshots are
:mod:`hubfsm.durable.outbox`'s. A simulation runs the same code on an in-memory database.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from hubfsm.core.values import (
    KEPT_ASIDE,
    Change,
    MetricsQueued,
    Offered,
    OpClosed,
    OpOpened,
    Refusal,
    Rejected,
    Saved,
)
from hubfsm.durable.layout import HubRoots, hub_of
from hubfsm.transport import FilePart, Request

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
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    request TEXT NOT NULL,
    payload TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""

#: How much of an unreadable record's text is kept with it.
_KEPT_TEXT = 4000


# -- values to and from JSON ---------------------------------------------------------


def _file_to_json(file: FilePart | None) -> dict[str, Any] | None:
    # Spelled out rather than attrs.asdict, which walks the class's fields on every call.
    if file is None:
        return None
    return {"name": file.name, "path": file.path, "size": file.size, "sha256": file.sha256}


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


def _epochs_in(payload: str, channel: str) -> Any:
    """The epochs a metrics record's payload names, if they read back; else None."""
    try:
        epochs = json.loads(payload)
    except ValueError:
        return None
    if channel == "metrics" and isinstance(epochs, list):
        return [e for e in epochs if isinstance(e, int)]
    return epochs if isinstance(epochs, int) else None


def _keep_aside(
    db: sqlite3.Connection, key: str, channel: str, text: str, payload: Any, error: Exception
) -> None:
    """Write an unreadable record as one kept aside, with its text as it was found."""
    kept = Request("POST", "", json={"unreadable": str(text)[:_KEPT_TEXT]}, idempotency_key=key)
    reason = f"its record in the outbox cannot be read ({type(error).__name__}); kept as found"
    db.execute(
        "INSERT OR IGNORE INTO rejected (key, channel, request, payload, status, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key, channel, _request_to_json(kept), json.dumps(payload), KEPT_ASIDE, reason),
    )


def _writes_more_than_one(change: Change, queued: set[int]) -> bool:
    """True when :meth:`OutboxDB.apply` writes ``change`` with more than one statement.

    ``queued`` holds the epochs that may have a row in ``metrics``.
    """
    if type(change) is OpOpened:
        return change.channel == "metrics" and any(e in queued for e in change.payload)
    return type(change) is Rejected


def _superseded(changes: Sequence[Change]) -> tuple[dict[int, int], dict[str, int]]:
    """Where a later change in ``changes`` makes an earlier one's write needless.

    Returns each epoch a metrics operation opens, with the last such position (an epoch
    queued before it needs no row: the operation's request carries it), and each slot's
    last offer's position (an earlier offer of that slot would be overwritten at once).
    """
    sent: dict[int, int] = {}
    offered: dict[str, int] = {}
    for at, change in enumerate(changes):
        if type(change) is OpOpened:
            if change.channel == "metrics":
                for epoch in change.payload:
                    sent[epoch] = at
        elif type(change) is Offered:
            offered[change.kind] = at
    return sent, offered


def _payload_json(payload: Any) -> str:
    """An operation's payload as JSON: the tuple of epochs of a metrics one, or an epoch."""
    # Spelled out for the tuple of plain ints every metrics operation carries (once an
    # epoch): the same text json.dumps gives, without its encoder's set-up.
    if type(payload) is tuple and all(type(e) is int for e in payload):
        return f"[{', '.join(map(str, payload))}]"
    return json.dumps(payload)


#: SQLite's primary result codes for a full disk and an I/O error.
_SQLITE_FULL = 13
_SQLITE_IOERR = 10


def _disk_error(error: sqlite3.OperationalError) -> OSError | None:
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
        mapped = _disk_error(error)
        if mapped is None:
            raise
        raise mapped from error


def _roll_back(db: sqlite3.Connection) -> None:
    """End a failed transaction; SQLite may already have rolled it back (a full disk)."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


#: An empty in-memory database with the schema, copied by :meth:`OutboxDB.in_memory`.
_template: sqlite3.Connection | None = None
_template_pid = 0
_TEMPLATE_LOCK = threading.Lock()


class OutboxDB:
    """The outbox's tables on one SQLite connection.

    Args:
        connection: An open connection in autocommit mode (``isolation_level=None``).
        model_id: The model the records belong to.
        has_schema: The connection's database already has the tables.
        hub: The hub the records are for, recorded unless one already is (an outbox
            made before hubs were recorded gets the hub of the first session that opens
            it); None records nothing.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        model_id: str,
        *,
        has_schema: bool = False,
        hub: HubRoots | None = None,
    ) -> None:
        self._db = connection
        if not has_schema:
            connection.executescript(_SCHEMA)
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('model_id', ?), ('journal_seq', '0'), "
                "('created', ?)",
                (model_id, repr(time.time())),
            )
            if hub is not None:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('api_root', ?), ('web_root', ?)",
                    (hub.api_root, hub.web_root),
                )
        # What the tables hold, as far as a write needs to know, so that a write never
        # reads. Each set holds at least what is on disk: a value is added before the
        # write that stores it and removed only after the commit that deletes it, so a
        # failed write can only cost a later one a needless statement, never skip one.
        #: The epochs with a row in ``metrics``.
        self._queued: set[int] = {e for (e,) in connection.execute("SELECT epoch FROM metrics")}
        #: The keys of operations that may refer to a weight file (every channel but metrics).
        self._file_ops: set[str] = {
            k for (k,) in connection.execute("SELECT key FROM ops WHERE channel != 'metrics'")
        }

    @classmethod
    def in_memory(cls, model_id: str) -> OutboxDB:
        """A database that lives as long as the object (for simulations)."""
        connection = sqlite3.connect(":memory:", isolation_level=None)
        # Copying an empty database with the schema costs a tenth of creating the tables.
        with _TEMPLATE_LOCK:
            global _template, _template_pid
            if _template is None or _template_pid != os.getpid():
                # Made again in a forked child: a connection is not to cross a fork.
                _template = sqlite3.connect(
                    ":memory:", isolation_level=None, check_same_thread=False
                )
                _template.executescript(_SCHEMA)
                _template_pid = os.getpid()
            _template.backup(connection)
        return cls(connection, model_id, has_schema=True)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        with disk_errors():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise

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
        return Saved(
            ops=ops,
            metrics=metrics,
            checkpoint=checkpoint,
            final=final,
            rejected=self.rejected(),
            refusal=self.refusal,
        )

    def referenced_files(self) -> set[str]:
        """The snapshots the records still refer to: every other one may go.

        Pending and rejected operations' files and both slots' files. Only the request
        and slot texts that can name a file are read (metrics never carry one), and only
        as far as the path: this runs after each write that may have freed a file.
        """
        keep = set()
        for (text,) in self._db.execute(
            "SELECT request FROM ops WHERE channel != 'metrics' "
            "UNION ALL SELECT request FROM rejected WHERE channel != 'metrics'"
        ):
            # A rejected record's weights are kept with it, for the user to look at
            # or discard.
            file = json.loads(text)["file"]
            if file is not None:
                keep.add(str(file["path"]))
        for (text,) in self._db.execute("SELECT value FROM slots"):
            keep.add(str(json.loads(text)["file"]["path"]))
        return keep

    def set_aside_unreadable(self) -> int:
        """Keep aside every pending record that does not read back; how many there were.

        One damaged row (a power cut, an edit by hand) must not stop the delivery of the
        rest: it moves to the rejected records with the status
        :data:`~hubfsm.core.values.KEPT_ASIDE`, its text kept, for ``hubfsm status`` to
        show and ``hubfsm discard --rejected`` to remove.
        """
        moved = 0
        with self._transaction() as db:
            for key, channel, request, payload in db.execute(
                "SELECT key, channel, request, payload FROM ops ORDER BY seq"
            ).fetchall():
                try:
                    _request_from_json(request)
                    json.loads(payload)
                except (ValueError, TypeError, KeyError) as error:
                    db.execute("DELETE FROM ops WHERE key = ?", (key,))
                    _keep_aside(db, key, channel, request, _epochs_in(payload, channel), error)
                    moved += 1
            for kind, value in db.execute("SELECT kind, value FROM slots").fetchall():
                try:
                    _slot_from_json(value)
                except (ValueError, TypeError, KeyError, AssertionError) as error:
                    db.execute("DELETE FROM slots WHERE kind = ?", (kind,))
                    key = f"unreadable-{kind}-{time.time_ns()}"
                    _keep_aside(db, key, kind, value, None, error)
                    moved += 1
        return moved

    def rejected(self) -> tuple[Rejected, ...]:
        """The records the hub refused, oldest first."""
        return tuple(
            Rejected(channel, _request_from_json(request), json.loads(payload), status, reason)
            for channel, request, payload, status, reason in self._db.execute(
                "SELECT channel, request, payload, status, reason FROM rejected ORDER BY seq"
            )
        )

    @property
    def hub(self) -> HubRoots | None:
        """The hub the records are for, if it was recorded."""
        return hub_of(self._db)

    @property
    def refusal(self) -> str | None:
        """The refusal that stopped the last session's sending, if it is not over."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'refusal'").fetchone()
        return None if row is None else str(row[0])

    def run(self) -> tuple[str | None, int | None]:
        """The protocol dialect the records are in (None: not recorded) and the run id."""
        rows = dict(
            self._db.execute("SELECT key, value FROM meta WHERE key IN ('protocol', 'run_id')")
        )
        spoken, run_id = rows.get("protocol"), rows.get("run_id")
        return (
            None if spoken is None else str(spoken),
            None if run_id is None else int(run_id),
        )

    def set_run(self, protocol: str, run_id: int | None) -> None:
        """Record the dialect and the Platform run id, for whoever opens the outbox next."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('protocol', ?)", (protocol,))
            if run_id is None:
                db.execute("DELETE FROM meta WHERE key = 'run_id'")
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('run_id', ?)", (str(run_id),))

    def drop_rejected(self, keys: Sequence[str] | None = None) -> int:
        """Forget rejected records (those of ``keys``, or all); returns how many went."""
        with self._transaction() as db:
            if keys is None:
                return db.execute("DELETE FROM rejected").rowcount
            return sum(
                db.execute("DELETE FROM rejected WHERE key = ?", (key,)).rowcount for key in keys
            )

    # -- writing -----------------------------------------------------------------

    def apply(self, changes: Sequence[Change], *, journal_seq: int | None = None) -> bool:
        """Write the core's changes, and how far the journal is consumed, in one transaction.

        Returns:
            True when weight files may have lost their last reference.

        Raises:
            OSError: The disk is full or failed (ENOSPC, EIO): nothing of the call is
                written, so the same changes can be written again later.
        """
        if not changes and journal_seq is None:
            return False
        try:
            return self._apply(self._db, changes, journal_seq)
        except sqlite3.OperationalError as error:
            mapped = _disk_error(error)
            if mapped is None:
                raise
            raise mapped from error

    def _apply(
        self, db: sqlite3.Connection, changes: Sequence[Change], journal_seq: int | None
    ) -> bool:
        files_touched = False
        queued, file_ops = self._queued, self._file_ops
        execute = db.execute
        # Trimmed from the sets once the transaction is committed (see __init__).
        sent_epochs: list[int] = []
        closed: list[str] = []
        # A write a later change of the same call overwrites is skipped: an epoch queued
        # and sent in one call needs no row of its own (a DELETE still clears an older
        # row), and only a slot's last offer in the call is written. The call is one
        # transaction, so what is on disk after it is the same.
        sent: dict[int, int] = {}
        offered: dict[str, int] = {}
        if len(changes) > 1:
            sent, offered = _superseded(changes)
        # One statement is atomic on its own: a call that writes one row (an operation
        # closed, a slot offered) goes without BEGIN and COMMIT, which double its cost.
        grouped = (
            journal_seq is not None or len(changes) > 1 or _writes_more_than_one(changes[0], queued)
        )
        if grouped:
            execute("BEGIN IMMEDIATE")
        try:
            for at, change in enumerate(changes):
                if type(change) is OpClosed:
                    key = change.key
                    execute("DELETE FROM ops WHERE key = ?", (key,))
                    # Only an upload's operation refers to a weight file: a metrics
                    # operation closing (once an epoch) leaves the files alone.
                    if key in file_ops:
                        files_touched = True
                        closed.append(key)
                elif type(change) is MetricsQueued:
                    if sent.get(change.epoch, -1) > at:
                        continue
                    queued.add(change.epoch)
                    execute(
                        "INSERT OR REPLACE INTO metrics VALUES (?, ?)",
                        (change.epoch, change.encoded),
                    )
                elif type(change) is Offered:
                    value = change.value
                    if value is None:
                        # The slot's file may have lost its last reference, whether the
                        # slot is cleared now or a later offer of the call replaces it.
                        files_touched = True
                    if offered.get(change.kind, at) > at:
                        continue
                    if value is None:
                        execute("DELETE FROM slots WHERE kind = ?", (change.kind,))
                    else:
                        execute(
                            "INSERT OR REPLACE INTO slots VALUES (?, ?)",
                            (change.kind, _slot_to_json(value)),
                        )
                elif type(change) is OpOpened:
                    payload = change.payload
                    if change.channel == "metrics":
                        rows = [(e,) for e in payload if e in queued]
                        if rows:
                            db.executemany("DELETE FROM metrics WHERE epoch = ?", rows)
                            sent_epochs.extend(e for (e,) in rows)
                    else:
                        file_ops.add(change.key)
                    execute(
                        "INSERT OR IGNORE INTO ops (key, channel, request, payload) "
                        "VALUES (?, ?, ?, ?)",
                        (
                            change.key,
                            change.channel,
                            _request_to_json(change.request),
                            # A metrics payload is a tuple of epochs: a JSON array.
                            _payload_json(payload),
                        ),
                    )
                elif type(change) is Rejected:
                    # Set aside in the same transaction that ends its operation.
                    execute("DELETE FROM ops WHERE key = ?", (change.key,))
                    closed.append(change.key)
                    execute(
                        "INSERT OR IGNORE INTO rejected "
                        "(key, channel, request, payload, status, reason) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            change.key,
                            change.channel,
                            _request_to_json(change.request),
                            json.dumps(
                                change.epochs if change.channel == "metrics" else change.payload
                            ),
                            change.status,
                            change.reason,
                        ),
                    )
                else:
                    assert isinstance(change, Refusal)
                    if change.text is None:
                        execute("DELETE FROM meta WHERE key = 'refusal'")
                    else:
                        execute("INSERT OR REPLACE INTO meta VALUES ('refusal', ?)", (change.text,))
            if journal_seq is not None:
                execute("UPDATE meta SET value = ? WHERE key = 'journal_seq'", (str(journal_seq),))
            if grouped:
                execute("COMMIT")
        except BaseException:
            if grouped:
                _roll_back(db)
            raise
        queued.difference_update(sent_epochs)
        file_ops.difference_update(closed)
        return files_touched

    def reclaim(self) -> None:
        """Move the write-ahead log into the database and give its space back.

        Best effort: it needs room for what the database grows by.
        """
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def copy_to(self, path: str | os.PathLike[str]) -> None:
        """Write the whole database to a file at ``path`` (an in-memory one included)."""
        target = sqlite3.connect(path)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
