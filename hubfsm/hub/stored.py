"""What a hub store keeps: model records, weight files' digests, staged files, replies, uploads.

The values the stores (:mod:`hubfsm.hub.store` and the SQLite and PostgreSQL ones) take
and give back; the domain (:mod:`hubfsm.hub.domain`) makes and reads them. The SQL
stores keep records and replies as the JSON texts made and read at the end, and page
through models with one query written once for both.

A Platform trainer PUTs a checkpoint to a signed URL, then says ``checkpoint_saved``;
only then does the file become the model's ``last``. In between it waits as an
:class:`Upload`, which each store keeps as its ``uploads``: in a dict for the in-memory
store (:class:`UploadsInMemory`), in the database for the SQLite store and a team's,
whose PUT and event may reach different processes or a restarted one
(:class:`UploadsInDatabase`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import attrs

from hubfsm.hub.keys import KeyRecord


def _tuple_of_list(value: Any) -> Any:
    # Lists come back from JSON; a frozen record keeps them as (hashable) tuples.
    return tuple(value) if isinstance(value, list) else value


def _texts(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ModelRecord:
    """One model as the hub stores it (the API's JSON view is built from it).

    Attributes:
        id: The 20-character model id.
        name: The name given at creation (``meta.name``).
        created_at: Hub clock seconds at creation.
        cfg: The architecture file, such as ``yolov8n.yaml``.
        dataset: The dataset name or URL, or None.
        parent: The parent weights' name for a pretrained model, or None.
        batch_size: Training config, as sent at creation (None when absent).
        epochs: Training config.
        imgsz: Training config.
        patience: Training config.
        device: Training config.
        cache: Training config.
        status: ``new``, ``training`` or ``trained``.
        has_last_weights: An epoch checkpoint was uploaded.
        has_best_weights: The final weights were uploaded.
        last_epoch: The epoch of the last checkpoint, or None.
        final_epoch: The epoch of the final weights, or None.
        map50_95: The mAP50-95 sent with the final weights, or None.
        agent_id: The id handed to the model's agent at its first heartbeat, or None.
        owner: The id of the API key that created the model (None in data written before
            keys had owners: any key may use such a model).
        metrics_epoch: The highest epoch with metrics, or None.
        started_at: Hub clock seconds of the first metrics, checkpoint or heartbeat.
        updated_at: Hub clock seconds of the last metrics or weights upload.
        heartbeat_at: Hub clock seconds of the last heartbeat.
        agent: The agent name the last heartbeat gave.
        project: The Platform project (``owner/project``) of a model made over the
            Platform API; None for a HUB v1 model.
        slug: The model's name in its Platform project (``ul://owner/project/slug``).
        run_id: The Platform run now writing to the model (a resume opens a new one).
        cancelled: The hub's user asked the run to stop; every Platform answer says so.
        checkpoint_path: The Platform storage path of the promoted checkpoint (``last``).
        params: Every training argument the trainer gave, as JSON text of an object
            (hubfsm sessions send them beside the HUB v1 body); None when none came.
        tags: Labels given by the session or on the run's page.
        notes: Free text given by the session or on the run's page.
        interrupted_at: Hub clock seconds when the session said the run stopped before
            its end (Ctrl-C, a signal, an exception); None while it runs, or once it
            heartbeats again or is trained.
        interrupted_by: What stopped it, as the session said (``Ctrl-C``, ``SIGTERM``).
    """

    id: str
    name: str
    created_at: float
    cfg: str
    dataset: str | None = None
    parent: str | None = None
    batch_size: int | None = None
    epochs: int | None = None
    imgsz: int | tuple[int, ...] | None = attrs.field(default=None, converter=_tuple_of_list)
    patience: int | None = None
    device: str | int | tuple[int | str, ...] | None = attrs.field(
        default=None, converter=_tuple_of_list
    )
    cache: str | bool | None = None
    status: str = "new"
    has_last_weights: bool = False
    has_best_weights: bool = False
    last_epoch: int | None = None
    final_epoch: int | None = None
    map50_95: float | None = None
    agent_id: str | None = None
    owner: str | None = None
    metrics_epoch: int | None = None
    started_at: float | None = None
    updated_at: float | None = None
    heartbeat_at: float | None = None
    agent: str | None = None
    project: str | None = None
    slug: str | None = None
    run_id: int | None = None
    cancelled: bool = False
    checkpoint_path: str | None = None
    params: str | None = None
    tags: tuple[str, ...] = attrs.field(default=(), converter=_texts)
    notes: str | None = None
    interrupted_at: float | None = None
    interrupted_by: str | None = None


@attrs.frozen
class WeightsInfo:
    """What the hub knows of a stored weight file."""

    sha256: str
    size: int


@attrs.frozen
class Staged:
    """Weights received and hashed but not yet in place (see :meth:`Store.stage_weights`).

    Attributes:
        sha256: The hex digest of the received bytes.
        size: Their length.
        handle: The store's own handle on them (the bytes, or a temporary file's path).
    """

    sha256: str
    size: int
    handle: bytes | str


@attrs.frozen
class StoredReply:
    """A reply remembered under an idempotency scope, to replay on a retry.

    Attributes:
        status: The HTTP status.
        body: The envelope.
        request: The digest of the request it answered (see
            :func:`~hubfsm.hub.calls.request_digest`); empty in replies kept before
            digests were, which replay to any request.
    """

    status: int
    body: dict[str, Any]
    request: str = ""


def record_text(record: ModelRecord | KeyRecord) -> str:
    """A model's or a key's record as the JSON text a SQL store keeps in its row."""
    return json.dumps(attrs.asdict(record), sort_keys=True)


def model_of(text: str) -> ModelRecord:
    """The model record a row's JSON text holds."""
    fields = {f.name for f in attrs.fields(ModelRecord)}
    # Ignore keys a newer version may have written, so an old hub still opens the data.
    return ModelRecord(**{k: v for k, v in json.loads(text).items() if k in fields})


def key_of(text: str) -> KeyRecord:
    """The key record a row's JSON text holds."""
    return KeyRecord(**json.loads(text))


def reply_of(row: tuple[object, ...]) -> StoredReply:
    """The reply a ``(status, body, request)`` row of ``replies`` holds."""
    status, body, request = row
    return StoredReply(int(str(status)), json.loads(str(body)), str(request))


def page_query(
    limit: int, before: tuple[float, str] | None, owner: str | None, owner_of: str, mark: str
) -> tuple[str, tuple[object, ...]]:
    """The query of a page of models (see :meth:`~hubfsm.hub.store.Store.page_models`).

    It walks the ``(created_at, id)`` index from ``before`` and stops after ``limit`` rows,
    so a page costs the same however many models the hub holds.

    Args:
        limit: Rows at most.
        before: The ``(created_at, id)`` the page starts below, or None for the newest.
        owner: Only this key's models, or None for all.
        owner_of: The SQL expression of a row's owner (each database reads JSON its way).
        mark: The database's parameter placeholder.

    Returns:
        The statement and its parameters.
    """
    where: list[str] = []
    params: list[object] = []
    if before is not None:
        where.append(f"(created_at, id) < ({mark}, {mark})")
        params += [before[0], before[1]]
    if owner is not None:
        where.append(f"{owner_of} = {mark}")
        params.append(owner)
    # Only the fixed clauses above are joined in; every value is a parameter.
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    sql = f"SELECT record FROM models {clause}ORDER BY created_at DESC, id DESC LIMIT {mark}"
    return sql, (*params, limit)


# -- Platform uploads waiting for promotion ---------------------------------------

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
