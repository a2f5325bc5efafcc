"""A team hub's PostgreSQL connections: a pool, one transaction per thread, deletes after commit.

The team's store (:mod:`hubfsm.hub.store_postgres`) and its uploads waiting for promotion
(:class:`~hubfsm.hub.stored.UploadsInDatabase`) run their statements through one
:class:`Database`, so that a statement made inside a transaction joins it, whichever of
them makes it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any


class Database:
    """A pool of connections to the database at ``url``.

    Args:
        url: A libpq connection string or ``postgresql://`` URL.
        pool_size: Connections kept open (one per concurrent request is plenty).
        delete: Deletes an object of the object store, once the transaction that stopped
            pointing at it has committed (see :meth:`delete_after_commit`).
    """

    def __init__(self, url: str, *, pool_size: int, delete: Callable[[str], None]) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            # A connection is checked as it leaves the pool: after a restart of the
            # database, each one the pool held would otherwise fail one request with a 500.
            check=ConnectionPool.check_connection,
            open=True,
            name="hub",
        )
        self._local = threading.local()
        self._delete = delete

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one database transaction on one connection of this thread."""
        if getattr(self._local, "conn", None) is not None:
            yield  # nested: part of the outer transaction
            return
        after: list[str] = []
        with self._pool.connection() as conn:
            self._local.conn, self._local.after = conn, after
            try:
                with conn.transaction():
                    yield
            finally:
                self._local.conn = self._local.after = None
        # Objects no record points at any more, deleted once the swap is durable.
        for key in after:
            self._delete(key)

    def in_transaction(self) -> bool:
        """Whether this thread is inside :meth:`transaction`."""
        return getattr(self._local, "conn", None) is not None

    def delete_after_commit(self, keys: Iterable[str]) -> None:
        """Delete these objects once this thread's transaction commits (not if it rolls back)."""
        self._local.after.extend(keys)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """This thread's transaction's connection, or one of the pool's for one statement."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._pool.connection() as own:
            yield own

    def rows(
        self, sql: str, params: tuple[object, ...] | Mapping[str, object] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (none for a statement without)."""
        with self.connection() as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def count(self, sql: str, params: tuple[object, ...]) -> int:
        """Run one statement; how many rows it changed."""
        with self.connection() as conn:
            return int(conn.execute(sql, params).rowcount)

    def claim(self, name: str) -> None:
        """Hold ``name`` until this transaction ends, once no other process's holds it."""
        self.rows("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()
