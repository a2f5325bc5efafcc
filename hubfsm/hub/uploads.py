"""Files PUT to Platform upload URLs, waiting for the event that promotes them.

A Platform trainer PUTs a checkpoint to a signed URL, then says ``checkpoint_saved``;
only then does the file become the model's ``last``. In between it waits here: in a dict
for the in-memory store (:class:`UploadsInMemory`), in the database for the SQLite store
and a team's, whose PUT and event may reach different processes or a restarted one
(:class:`UploadsInDatabase`). Each store holds one as its ``uploads``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import attrs

from hubfsm.hub.stored import Staged

#: Uploads of one model kept unpromoted, at most: a client that never promotes what it
#: PUT pushes out its own oldest, nobody else's.
UPLOADS_KEPT = 64


@attrs.frozen
class Upload:
    """A file PUT to a Platform upload URL, waiting for ``checkpoint_saved`` to promote it.

    Attributes:
        model_id: The model the upload URL was made for.
        run_id: The run it was made in.
        staged: The file, received and hashed.
    """

    model_id: str
    run_id: int
    staged: Staged


class Uploads(Protocol):
    """What the hub needs of the uploads waiting for promotion."""

    def put(self, path: str, upload: Upload) -> list[Staged]:
        """Keep ``upload`` under its upload path until it is promoted.

        Every process of the hub must find it: the PUT and the event that promotes it may
        reach different ones. Returns the staged files it pushes out (one kept under the
        same path before, the model's oldest beyond :data:`UPLOADS_KEPT`), to discard.
        """

    def take(self, path: str) -> Upload | None:
        """Forget and return the upload kept under ``path``, or None."""

    def of_model(self, model_id: str) -> dict[str, Upload]:
        """The model's uploads not yet promoted, by upload path, oldest first."""

    def drop(self, model_id: str) -> None:
        """Forget the model's uploads not yet promoted and delete their files.

        Inside a transaction the files go once it commits: rolled back, the uploads stay.
        """


class UploadsInMemory:
    """Uploads in a dict, for the in-memory store (a restart forgets it all anyway).

    The hub's lock serialises the calls.

    Args:
        discard: Deletes a staged file (the store's ``discard_weights``).
    """

    def __init__(self, discard: Callable[[Staged], None]) -> None:
        self._discard = discard
        self._kept: dict[str, Upload] = {}

    def put(self, path: str, upload: Upload) -> list[Staged]:
        """Keep ``upload`` under ``path``; the staged files pushed out, to discard."""
        dropped = []
        replaced = self._kept.pop(path, None)
        if replaced is not None:
            dropped.append(replaced.staged)
        mine = [key for key, kept in self._kept.items() if kept.model_id == upload.model_id]
        for key in mine[: max(0, len(mine) - UPLOADS_KEPT + 1)]:
            dropped.append(self._kept.pop(key).staged)
        self._kept[path] = upload
        return dropped

    def take(self, path: str) -> Upload | None:
        """Forget and return the upload kept under ``path``, or None."""
        return self._kept.pop(path, None)

    def of_model(self, model_id: str) -> dict[str, Upload]:
        """The model's uploads not yet promoted, oldest first."""
        return {key: kept for key, kept in self._kept.items() if kept.model_id == model_id}

    def drop(self, model_id: str) -> None:
        """Forget the model's uploads not yet promoted and delete their files."""
        for key in self.of_model(model_id):
            self._discard(self._kept.pop(key).staged)


class Database(Protocol):
    """What :class:`UploadsInDatabase` needs of a store's database."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group the statements of the block into one transaction."""

    def rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """Run one statement (inside the transaction, if one is open); its rows."""

    def claim(self, name: str) -> None:
        """Hold ``name`` until this transaction ends."""

    def delete_after_commit(self, handles: Iterable[str]) -> None:
        """Delete these staged files once the transaction commits (not if it rolls back)."""


class UploadsInDatabase:
    """Uploads in the store's ``uploads`` table: a restart or another process finds them.

    The team's database (its files in the object store) and the SQLite store (its files
    in the staging folder) keep them alike: a PUT answered 200 is promoted by its event
    whenever that comes, on whichever process.

    Args:
        db: The store's database.
        mark: Its parameter placeholder (``%s`` or ``?``).
        handle: The column of a staged file's handle (an object key, or a path).
    """

    def __init__(self, db: Database, *, mark: str, handle: str) -> None:
        self._db = db
        self._m = mark
        self._h = handle

    def put(self, path: str, upload: Upload) -> list[Staged]:
        """Keep ``upload`` under ``path`` for every process; the staged files pushed out."""
        staged, m, h = upload.staged, self._m, self._h
        assert isinstance(staged.handle, str)
        rows = self._db.rows
        with self._db.transaction():
            # One model's uploads are counted and trimmed by one process at a time.
            self._db.claim(f"uploads {upload.model_id}")
            forget = f"DELETE FROM uploads WHERE path = {m} RETURNING sha256, size, {h}"
            dropped = rows(forget, (path,))
            rows(
                f"INSERT INTO uploads (path, model_id, run_id, sha256, size, {h}) "
                f"VALUES ({m}, {m}, {m}, {m}, {m}, {m})",
                (path, upload.model_id, upload.run_id, staged.sha256, staged.size, staged.handle),
            )
            mine = rows(
                f"SELECT path FROM uploads WHERE model_id = {m} ORDER BY seq DESC",
                (upload.model_id,),
            )
            for (old,) in mine[UPLOADS_KEPT:]:
                dropped += rows(forget, (old,))
        return [Staged(str(sha), int(size), str(key)) for sha, size, key in dropped]

    def take(self, path: str) -> Upload | None:
        """Forget and return the upload kept under ``path``, or None."""
        rows = self._db.rows(
            f"DELETE FROM uploads WHERE path = {self._m} "
            f"RETURNING model_id, run_id, sha256, size, {self._h}",
            (path,),
        )
        return _upload_of(rows[0]) if rows else None

    def of_model(self, model_id: str) -> dict[str, Upload]:
        """The model's uploads not yet promoted, oldest first."""
        rows = self._db.rows(
            f"SELECT path, model_id, run_id, sha256, size, {self._h} FROM uploads "
            f"WHERE model_id = {self._m} ORDER BY seq",
            (model_id,),
        )
        return {str(row[0]): _upload_of(row[1:]) for row in rows}

    def drop(self, model_id: str) -> None:
        """Forget the model's uploads not yet promoted; their files go after the commit."""
        with self._db.transaction():
            gone = self._db.rows(
                f"DELETE FROM uploads WHERE model_id = {self._m} RETURNING {self._h}", (model_id,)
            )
            self._db.delete_after_commit(str(row[0]) for row in gone)


def _upload_of(row: tuple[Any, ...]) -> Upload:
    model_id, run_id, sha, size, key = row
    return Upload(str(model_id), int(run_id), Staged(str(sha), int(size), str(key)))
