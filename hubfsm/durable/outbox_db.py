"""The outbox's records in SQLite: pending metrics, operations and weight slots.

Only SQL lives here; the directory, its lock and the weight snapshots are
:mod:`hubfsm.durable.outbox`'s. A simulation runs the same code on an in-memory database.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from hubfsm.core.values import (
    Change,
    MetricsQueued,
    Offered,
    OpClosed,
    OpOpened,
    Refusal,
    Rejected,
    Saved,
)
from hubfsm.durable import salvage
from hubfsm.durable.layout import HubRoots, disk_error, disk_errors, hub_of, roll_back
from hubfsm.durable.rows import (
    SCHEMA,
    payload_json,
    request_from_json,
    request_to_json,
    slot_from_json,
    slot_to_json,
    superseded,
    writes_more_than_one,
)
from hubfsm.transport import FilePart

#: An empty in-memory database with the schema, copied by :meth:`OutboxDB.in_memory`.
_template: sqlite3.Connection | None = None
_template_pid = 0
_TEMPLATE_LOCK = threading.Lock()
#: The meta rows that name a run, for a trainer back after a kill to go on with.
_RUN_KEYS = "('protocol', 'run_id', 'model_url')"


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
            connection.executescript(SCHEMA)
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
                _template.executescript(SCHEMA)
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
                roll_back(db)
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
            OpOpened(channel, request_from_json(request), json.loads(payload))
            for channel, request, payload in db.execute(
                "SELECT channel, request, payload FROM ops ORDER BY seq"
            )
        )
        metrics = tuple(db.execute("SELECT epoch, encoded FROM metrics ORDER BY epoch"))
        slots = dict(db.execute("SELECT kind, value FROM slots"))
        checkpoint = slot_from_json(slots["checkpoint"]) if "checkpoint" in slots else None
        final = slot_from_json(slots["final"]) if "final" in slots else None
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

        See :func:`hubfsm.durable.salvage.set_aside_unreadable`.
        """
        with self._transaction() as db:
            return salvage.set_aside_unreadable(db)

    def check_files(self, check: Callable[[FilePart, bool], FilePart | str]) -> int:
        """Hand every weight file a record names to ``check``; how many records changed.

        See :func:`hubfsm.durable.salvage.check_files`.
        """
        with self._transaction() as db:
            return salvage.check_files(db, check)

    def rejected(self) -> tuple[Rejected, ...]:
        """The records the hub refused, oldest first."""
        return tuple(
            Rejected(channel, request_from_json(request), json.loads(payload), status, reason)
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

    def run(self) -> tuple[str | None, int | None, str | None]:
        """The records' dialect (None: not recorded), the run id and the model's page."""
        rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN " + _RUN_KEYS))
        spoken, run_id, url = rows.get("protocol"), rows.get("run_id"), rows.get("model_url")
        return (
            None if spoken is None else str(spoken),
            None if run_id is None else int(run_id),
            None if url is None else str(url),
        )

    def set_run(self, protocol: str, run_id: int | None, model_url: str | None = None) -> None:
        """Record the dialect, the Platform run id and its page, for the next opener."""
        with self._transaction() as db:
            db.execute("DELETE FROM meta WHERE key IN " + _RUN_KEYS)
            kept = {"protocol": protocol, "run_id": run_id, "model_url": model_url}
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [(key, str(value)) for key, value in kept.items() if value is not None],
            )

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
            if journal_seq is None and len(changes) == 1 and type(changes[0]) is OpClosed:
                # An acknowledged operation closing, alone: the most frequent write (one
                # per answer), one statement, atomic without BEGIN and COMMIT.
                key = changes[0].key
                self._db.execute("DELETE FROM ops WHERE key = ?", (key,))
                if key in self._file_ops:
                    self._file_ops.discard(key)
                    return True
                return False
            return self._apply(self._db, changes, journal_seq)
        except sqlite3.OperationalError as error:
            mapped = disk_error(error)
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
            sent, offered = superseded(changes)
        # One statement is atomic on its own: a call that writes one row (an operation
        # closed, a slot offered) goes without BEGIN and COMMIT, which double its cost.
        grouped = (
            journal_seq is not None or len(changes) > 1 or writes_more_than_one(changes[0], queued)
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
                            (change.kind, slot_to_json(value)),
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
                            request_to_json(change.request),
                            # A metrics payload is a tuple of epochs: a JSON array.
                            payload_json(payload),
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
                            request_to_json(change.request),
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
                roll_back(db)
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
