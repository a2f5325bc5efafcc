"""A store for a team's hub: records in PostgreSQL, weight files in an S3 object store.

Any number of hub processes, on any number of machines, share one database and one bucket.
The database isolates them, not a lock in a process:

- A transaction (:meth:`PostgresStore.transaction`) holds one connection of the pool for the
  thread that opened it; a model read inside one locks its row (``SELECT ... FOR UPDATE``)
  until the commit, so two processes updating one model take turns.
- An idempotency scope is claimed by a per-scope transaction lock
  (``pg_advisory_xact_lock``) before its reply is looked up, so two racing requests with
  one key apply once: the second waits, then replays the first one's reply.
- Replies are kept for :data:`REPLY_RETENTION` seconds, then pruned.
- The URL-signing secret lives in the database: every process signs and checks alike.
- Weight files are immutable objects (see :class:`~hubfsm.hub.team.S3Objects`); a
  model's row in ``weights`` points at its current one, and the replaced object is
  deleted after the pointer swap committed.
- A file PUT to a Platform upload URL waits in ``uploads`` for the event that promotes it,
  which may reach another process than the PUT did.

The schema (:data:`~hubfsm.hub.admin.MIGRATIONS`, applied by :func:`~hubfsm.hub.admin.migrate`
before the hub's processes start) mirrors :class:`~hubfsm.hub.store_sqlite.SqliteStore`'s.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

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
from hubfsm.hub.team import Database, S3Objects

#: Seconds an idempotent reply is kept: a retry or an outbox replay within it is answered
#: from the reply; a replay later than that is applied again.
REPLY_RETENTION = 30 * 86400.0

#: Row reads of a weight file's pointer before giving up on an object deleted under it
#: (each retry follows a replacement committed in between: a few are plenty).
_READ_TRIES = 5

#: Prune expired replies once in this many stored replies (per process).
_PRUNE_EVERY = 1000


class PostgresStore:
    """The hub's state in PostgreSQL at ``url``, weight files in ``objects``.

    Args:
        url: A libpq connection string or ``postgresql://`` URL.
        objects: Where weight files go (None for a store used only for keys and records,
            as ``hubfsm hub keys`` does).
        pool_size: Connections kept open (one per concurrent request is plenty).
        reply_retention: Seconds an idempotent reply is kept.
        clock: Seconds now (for reply expiry).
    """

    #: The database isolates concurrent requests: the hub takes no lock of its own.
    isolates = True

    def __init__(
        self,
        url: str,
        objects: S3Objects | None,
        *,
        pool_size: int = 8,
        reply_retention: float = REPLY_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._objects = objects
        self.reply_retention = reply_retention
        self._clock = clock
        self._db = Database(url, pool_size=pool_size, delete=self._delete_object)
        self.uploads = UploadsInDatabase(self._db, mark="%s", handle="object")
        self._puts = 0
        self._puts_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore(objects={self._objects!r})"

    @property
    def objects(self) -> S3Objects:
        """The object store of the weight files."""
        if self._objects is None:
            raise RuntimeError("this store was opened without an object store")
        return self._objects

    # -- transactions ---------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Run the block in one database transaction on one connection of this thread."""
        return self._db.transaction()

    def claim(self, name: str) -> None:
        """Hold ``name`` until this transaction ends, once no other process's holds it."""
        self._db.claim(name)

    def _delete_object(self, key: str) -> None:
        self.objects.delete(key)

    # -- models and metrics -----------------------------------------------------------

    def get_model(self, model_id: str) -> ModelRecord | None:
        """The model's record, or None; inside a transaction its row stays locked until the end."""
        lock = " FOR UPDATE" if self._db.in_transaction() else ""
        rows = self._db.rows(f"SELECT record FROM models WHERE id = %s{lock}", (model_id,))
        return model_of(str(rows[0][0])) if rows else None

    def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model record."""
        self._db.rows(
            "INSERT INTO models (id, created_at, record) VALUES (%s, %s, %s) ON CONFLICT (id) "
            "DO UPDATE SET created_at = EXCLUDED.created_at, record = EXCLUDED.record",
            (record.id, record.created_at, record_text(record)),
        )

    def delete_model(self, model_id: str) -> bool:
        """Forget a model with its metrics and weights (the objects go after the commit)."""
        with self.transaction():
            found = self._db.count("DELETE FROM models WHERE id = %s", (model_id,))
            for table in ("metrics", "console"):
                self._db.rows(f"DELETE FROM {table} WHERE model_id = %s", (model_id,))
            for table in ("weights", "uploads"):
                gone = self._db.rows(
                    f"DELETE FROM {table} WHERE model_id = %s RETURNING object", (model_id,)
                )
                self._db.delete_after_commit(str(row[0]) for row in gone)
        return found > 0

    def put_console(self, model_id: str, chunk_id: int, lines: int, text: str) -> bool:
        """Keep a console chunk unless one with that id is kept already."""
        sql = (
            "INSERT INTO console (model_id, chunk_id, lines, content) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
        )
        return self._db.count(sql, (model_id, chunk_id, lines, text)) > 0

    def get_console(self, model_id: str) -> list[tuple[int, int, str]]:
        """The model's console chunks, in chunk order."""
        rows = self._db.rows(
            "SELECT chunk_id, lines, content FROM console WHERE model_id = %s ORDER BY chunk_id",
            (model_id,),
        )
        return [(int(c), int(n), str(t)) for c, n, t in rows]

    def list_models(self) -> list[ModelRecord]:
        """Every model, oldest first."""
        rows = self._db.rows("SELECT record FROM models ORDER BY created_at, id")
        return [model_of(str(row[0])) for row in rows]

    def page_models(
        self, limit: int, before: tuple[float, str] | None = None, owner: str | None = None
    ) -> list[ModelRecord]:
        """Up to ``limit`` models, newest first, older than ``before``, of ``owner`` if given."""
        sql, params = page_query(limit, before, owner, "(record::jsonb ->> 'owner')", "%s")
        return [model_of(str(row[0])) for row in self._db.rows(sql, params)]

    def put_metrics(
        self, model_id: str, metrics: Mapping[int, str], at: float | None = None
    ) -> None:
        """Insert or replace each epoch's metrics (an epoch keeps its first time)."""
        if not metrics:
            return
        sql = (
            "INSERT INTO metrics (model_id, epoch, metrics, arrived_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (model_id, epoch) DO UPDATE SET metrics = EXCLUDED.metrics, "
            "arrived_at = coalesce(metrics.arrived_at, EXCLUDED.arrived_at)"
        )
        rows = [(model_id, epoch, text, at) for epoch, text in metrics.items()]
        if len(rows) == 1:  # a training loop's usual request: one statement, one round trip
            self._db.rows(sql, rows[0])
            return
        with self.transaction(), self._db.connection() as conn, conn.cursor() as cursor:
            cursor.executemany(sql, rows)

    def metric_times(self, model_id: str) -> dict[int, float]:
        """When each epoch's metrics first came."""
        rows = self._db.rows(
            "SELECT epoch, arrived_at FROM metrics WHERE model_id = %s AND arrived_at IS NOT NULL",
            (model_id,),
        )
        return {int(epoch): float(at) for epoch, at in rows}

    def get_metrics(self, model_id: str) -> list[tuple[int, str]]:
        """The model's ``(epoch, JSON text)`` pairs, sorted by epoch."""
        rows = self._db.rows(
            "SELECT epoch, metrics FROM metrics WHERE model_id = %s ORDER BY epoch", (model_id,)
        )
        return [(int(epoch), str(text)) for epoch, text in rows]

    # -- weights ------------------------------------------------------------------------

    def stage_weights(self, source: Source) -> Staged:
        """Stream ``source`` to a new object, hashing on the way; the handle is its key."""
        key, sha, size = self.objects.put(source)
        return Staged(sha, size, key)

    def commit_weights(self, model_id: str, kind: WeightsKind, staged: Staged) -> None:
        """Point the model's ``kind`` file at the staged object; the old one goes after commit."""
        assert isinstance(staged.handle, str)
        with self.transaction():
            old = self._db.rows(
                "SELECT object FROM weights WHERE model_id = %s AND kind = %s FOR UPDATE",
                (model_id, kind),
            )
            self._db.rows(
                "INSERT INTO weights (model_id, kind, sha256, size, object) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model_id, kind) DO UPDATE SET "
                "sha256 = EXCLUDED.sha256, size = EXCLUDED.size, object = EXCLUDED.object",
                (model_id, kind, staged.sha256, staged.size, staged.handle),
            )
            if old and old[0][0] != staged.handle:
                self._db.delete_after_commit([str(old[0][0])])

    def discard_weights(self, staged: Staged) -> None:
        """Delete the staged object unless a record points at it (it was committed)."""
        assert isinstance(staged.handle, str)
        if not self._db.rows("SELECT 1 FROM weights WHERE object = %s", (staged.handle,)):
            self.objects.delete(staged.handle)

    def _weights_row(self, model_id: str, kind: WeightsKind) -> tuple[WeightsInfo, str] | None:
        """The ``kind`` file's digest and size, and the key of its object; or None."""
        rows = self._db.rows(
            "SELECT sha256, size, object FROM weights WHERE model_id = %s AND kind = %s",
            (model_id, kind),
        )
        return (WeightsInfo(str(rows[0][0]), int(rows[0][1])), str(rows[0][2])) if rows else None

    def weights_info(self, model_id: str, kind: WeightsKind) -> WeightsInfo | None:
        """Digest and size of the model's ``kind`` file, or None."""
        row = self._weights_row(model_id, kind)
        return None if row is None else row[0]

    def open_weights(self, model_id: str, kind: WeightsKind) -> bytes | IO[bytes] | None:
        """A stream of the model's ``kind`` file from the object store, or None."""
        row = self._weights_row(model_id, kind)
        return None if row is None else self.objects.open(row[1])

    def read_weights(
        self, model_id: str, kind: WeightsKind
    ) -> tuple[WeightsInfo, bytes | IO[bytes]] | None:
        """The ``kind`` file's digest and a stream of its object, both from one row read.

        Another process may swap the pointer and delete the old object between the row
        read and the object's opening; the row is then read again (the newer file's).
        """
        for _ in range(_READ_TRIES):
            row = self._weights_row(model_id, kind)
            if row is None:
                return None
            content = self.objects.open(row[1])
            if content is not None:
                return row[0], content
        return None

    def weights_link(
        self, model_id: str, kind: WeightsKind, ttl: float, name: str
    ) -> tuple[WeightsInfo, str] | None:
        """The file's digest and a presigned URL that fetches it straight from the store."""
        row = self._weights_row(model_id, kind)
        return None if row is None else (row[0], self.objects.presign(row[1], ttl, name))

    def sweep_objects(self, older_than: float = 86400.0) -> int:
        """Delete weight objects no record points at (uploads cut short by a crash).

        Only objects older than ``older_than`` seconds: an upload in flight is in no record
        yet. Multipart uploads begun that long ago and never finished are aborted. Returns
        how many objects and uploads went.
        """
        sql = "SELECT object FROM weights UNION SELECT object FROM uploads"
        known = {str(row[0]) for row in self._db.rows(sql)}
        return self.objects.sweep(known, self._clock() - older_than)

    def claim_sweep(self, every: float) -> bool:
        """Claim the team's next sweep: True for one process in each ``every`` seconds.

        One statement, so two processes asking at once cannot both win; the time of the
        last sweep claimed is kept with the settings.
        """
        now = self._clock()
        rows = self._db.rows(
            "INSERT INTO settings (name, value) VALUES ('swept_at', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value "
            "WHERE settings.value::float8 <= %s RETURNING name",
            (repr(now), now - every),
        )
        return bool(rows)

    # -- replies, keys, settings --------------------------------------------------------

    def get_reply(self, scope: str) -> StoredReply | None:
        """The reply remembered under ``scope``, or None.

        Inside a transaction the scope is claimed first: a request with the same scope in
        any other process waits here until this transaction ends, then sees its reply.
        """
        if self._db.in_transaction():
            # A statement of its own: a statement reads the snapshot taken when it began,
            # so a look-up in the same statement would miss the reply the holder wrote.
            self._db.rows("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (scope,))
        rows = self._db.rows(
            "SELECT status, body, request FROM replies WHERE scope = %s AND stored_at >= %s",
            (scope, self._clock() - self.reply_retention),
        )
        return reply_of(rows[0]) if rows else None

    def put_reply(self, scope: str, reply: StoredReply) -> None:
        """Remember a reply under ``scope`` (pruning expired ones now and then)."""
        now = self._clock()
        self._db.rows(
            "INSERT INTO replies (scope, status, body, request, stored_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (scope) DO UPDATE SET "
            "status = EXCLUDED.status, body = EXCLUDED.body, request = EXCLUDED.request, "
            "stored_at = EXCLUDED.stored_at",
            (scope, reply.status, json.dumps(reply.body), reply.request, now),
        )
        with self._puts_lock:
            self._puts += 1
            due = self._puts % _PRUNE_EVERY == 0
        if due:
            self.prune_replies()

    def prune_replies(self) -> int:
        """Delete replies older than the retention; how many went."""
        cutoff = self._clock() - self.reply_retention
        return self._db.count("DELETE FROM replies WHERE stored_at < %s", (cutoff,))

    def get_key(self, digest: str) -> KeyRecord | None:
        """The key whose digest is ``digest``, or None.

        Always asked of the database, so a revocation by any process holds at every
        process's next request.
        """
        rows = self._db.rows("SELECT record FROM keys WHERE digest = %s", (digest,))
        return key_of(str(rows[0][0])) if rows else None

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a key record."""
        self._db.rows(
            "INSERT INTO keys (digest, created_at, record) VALUES (%s, %s, %s) "
            "ON CONFLICT (digest) DO UPDATE SET record = EXCLUDED.record",
            (record.digest, record.created_at, record_text(record)),
        )

    def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        rows = self._db.rows("SELECT record FROM keys ORDER BY created_at, digest")
        return [key_of(str(row[0])) for row in rows]

    def take_token(self, who: str, rate: float, capacity: float) -> tuple[bool, float]:
        """Spend a token of ``who``'s bucket if it holds one: (spent, tokens left).

        One statement, so processes on any host count into one bucket; the database's
        clock refills it, so their clocks need not agree.
        """
        refill = "LEAST(%(cap)s, b.tokens + (EXCLUDED.at - b.at) * %(rate)s)"
        rows = self._db.rows(
            "INSERT INTO rate_buckets AS b (who, tokens, at, spent) "
            "VALUES (%(who)s, %(cap)s - 1, extract(epoch FROM clock_timestamp()), true) "
            "ON CONFLICT (who) DO UPDATE SET "
            f"tokens = CASE WHEN {refill} >= 1 THEN {refill} - 1 ELSE {refill} END, "
            f"spent = {refill} >= 1, at = EXCLUDED.at "
            "RETURNING spent, tokens",
            {"who": who, "cap": capacity, "rate": rate},
        )
        return bool(rows[0][0]), float(rows[0][1])

    def url_secret(self) -> bytes:
        """The URL-signing secret every process shares, made by the first one to ask."""
        self._db.rows(
            "INSERT INTO settings (name, value) VALUES ('url_secret', %s) "
            "ON CONFLICT (name) DO NOTHING",
            (secrets.token_bytes(32).hex(),),
        )
        rows = self._db.rows("SELECT value FROM settings WHERE name = 'url_secret'")
        return bytes.fromhex(str(rows[0][0]))

    def close(self) -> None:
        """Close the pool's connections."""
        self._db.close()
