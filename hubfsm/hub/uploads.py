"""Files PUT to Platform upload URLs, waiting for the event that promotes them.

A Platform trainer PUTs a checkpoint to a signed URL, then says ``checkpoint_saved``;
only then does the file become the model's ``last``. In between it waits here: in a dict
for a store one process owns (:class:`UploadsInMemory`), in the database for a team's,
whose PUT and event may reach different processes (:class:`UploadsInPostgres`). Each
store holds one as its ``uploads``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from hubfsm.hub.stored import Staged

if TYPE_CHECKING:
    from hubfsm.hub.postgres import Database

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
    """Uploads in a dict, for the stores one process owns.

    A restart of that process forgets them (the trainer's ``checkpoint_saved`` then gets
    404); the hub's lock serialises the calls.

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


class UploadsInPostgres:
    """Uploads in the team database's ``uploads`` table, their files in the object store.

    Args:
        db: The team hub's database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, path: str, upload: Upload) -> list[Staged]:
        """Keep ``upload`` under ``path`` for every process; the staged files pushed out."""
        staged = upload.staged
        assert isinstance(staged.handle, str)
        rows = self._db.rows
        with self._db.transaction():
            # One model's uploads are counted and trimmed by one process at a time.
            self._db.claim(f"uploads {upload.model_id}")
            dropped = rows(
                "DELETE FROM uploads WHERE path = %s RETURNING sha256, size, object", (path,)
            )
            rows(
                "INSERT INTO uploads (path, model_id, run_id, sha256, size, object) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (path, upload.model_id, upload.run_id, staged.sha256, staged.size, staged.handle),
            )
            dropped += rows(
                "DELETE FROM uploads WHERE path IN (SELECT path FROM uploads WHERE model_id = %s "
                "ORDER BY seq DESC OFFSET %s) RETURNING sha256, size, object",
                (upload.model_id, UPLOADS_KEPT),
            )
        return [Staged(str(sha), int(size), str(key)) for sha, size, key in dropped]

    def take(self, path: str) -> Upload | None:
        """Forget and return the upload kept under ``path``, or None."""
        rows = self._db.rows(
            "DELETE FROM uploads WHERE path = %s RETURNING model_id, run_id, sha256, size, object",
            (path,),
        )
        return _upload_of(rows[0]) if rows else None

    def of_model(self, model_id: str) -> dict[str, Upload]:
        """The model's uploads not yet promoted, oldest first."""
        rows = self._db.rows(
            "SELECT path, model_id, run_id, sha256, size, object FROM uploads "
            "WHERE model_id = %s ORDER BY seq",
            (model_id,),
        )
        return {str(row[0]): _upload_of(row[1:]) for row in rows}

    def drop(self, model_id: str) -> None:
        """Forget the model's uploads not yet promoted; their objects go after the commit."""
        with self._db.transaction():
            gone = self._db.rows(
                "DELETE FROM uploads WHERE model_id = %s RETURNING object", (model_id,)
            )
            self._db.delete_after_commit(str(row[0]) for row in gone)


def _upload_of(row: tuple[Any, ...]) -> Upload:
    model_id, run_id, sha, size, key = row
    return Upload(str(model_id), int(run_id), Staged(str(sha), int(size), str(key)))
