"""What the hub keeps, the small storage interface its domain logic needs, and a store in dicts.

The domain (:mod:`hubfsm.hub.domain`) decides; a store only remembers. Three stores exist:
:class:`MemoryStore` here, fast enough for a simulated 300-epoch session in milliseconds
(simulations and tests); :class:`~hubfsm.hub.store_sqlite.SqliteStore` for the local hub
server; :class:`~hubfsm.hub.store_postgres.PostgresStore` for a team's.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import IO, Any, Literal, Protocol

import attrs

from hubfsm.hub.keys import KeyRecord

#: The two weight files a model can have: the last epoch checkpoint and the best (final) one.
WeightsKind = Literal["last", "best"]

#: A request body source: bytes in memory, or a binary stream to read in chunks.
Source = bytes | IO[bytes]


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


#: Uploads of one model kept unpromoted, at most: a client that never promotes what it
#: PUT pushes out its own oldest, nobody else's.
UPLOADS_KEPT = 64


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


class Store(Protocol):
    """The storage the hub's domain logic needs; every method is short and thread-safe."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group the writes made inside the block so they land together or not at all."""

    def claim(self, name: str) -> None:
        """Inside a transaction, hold ``name`` until it ends, once no other holds it.

        For a choice made from what the store holds (a free name), which two processes
        must not make at once; a store one process owns needs nothing (the hub's lock).
        """

    def get_model(self, model_id: str) -> ModelRecord | None:
        """The model's record, or None."""

    def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model record."""

    def delete_model(self, model_id: str) -> bool:
        """Forget a model with its metrics and weights; False if it did not exist."""

    def list_models(self) -> list[ModelRecord]:
        """Every model, oldest first."""

    def page_models(
        self, limit: int, before: tuple[float, str] | None = None, owner: str | None = None
    ) -> list[ModelRecord]:
        """Up to ``limit`` models, newest first, older than ``before`` (``created_at``, id).

        With ``owner``, only the models of that key (the pages of a signed-in member).
        """

    def put_metrics(
        self, model_id: str, metrics: Mapping[int, str], at: float | None = None
    ) -> None:
        """Insert or replace the JSON-encoded metrics of each epoch.

        ``at``: hub clock seconds now; an epoch keeps the time its metrics first came.
        """

    def get_metrics(self, model_id: str) -> list[tuple[int, str]]:
        """The model's ``(epoch, JSON text)`` pairs, sorted by epoch."""

    def metric_times(self, model_id: str) -> dict[int, float]:
        """When each epoch's metrics first came (hub clock seconds), where it was noted."""

    def stage_weights(self, source: Source) -> Staged:
        """Receive and hash a weight file without making it visible yet."""

    def commit_weights(self, model_id: str, kind: WeightsKind, staged: Staged) -> None:
        """Put staged weights in place as the model's ``kind`` file, replacing any older one."""

    def discard_weights(self, staged: Staged) -> None:
        """Drop staged weights that will not be committed (harmless after a commit)."""

    def weights_info(self, model_id: str, kind: WeightsKind) -> WeightsInfo | None:
        """Digest and size of the model's ``kind`` file, or None."""

    def open_weights(self, model_id: str, kind: WeightsKind) -> bytes | IO[bytes] | None:
        """The model's ``kind`` file: bytes, or an open stream the caller closes; or None."""

    def read_weights(
        self, model_id: str, kind: WeightsKind
    ) -> tuple[WeightsInfo, bytes | IO[bytes]] | None:
        """The ``kind`` file's digest and content, of one and the same upload; or None."""

    def put_upload(self, path: str, upload: Upload) -> list[Staged]:
        """Keep ``upload`` under its upload path until it is promoted.

        Every process of the hub must find it: the PUT and the event that promotes it may
        reach different ones. Returns the staged files it pushes out (one kept under the
        same path before, the model's oldest beyond :data:`UPLOADS_KEPT`), to discard.
        """

    def take_upload(self, path: str) -> Upload | None:
        """Forget and return the upload kept under ``path``, or None."""

    def model_uploads(self, model_id: str) -> dict[str, Upload]:
        """The model's uploads not yet promoted, by upload path, oldest first."""

    def drop_uploads(self, model_id: str) -> None:
        """Forget the model's uploads not yet promoted and delete their files.

        Inside a transaction the files go once it commits: rolled back, the uploads stay.
        """

    def put_console(self, model_id: str, chunk_id: int, lines: int, text: str) -> bool:
        """Keep one chunk of a run's console output; False if that chunk is already kept."""

    def get_console(self, model_id: str) -> list[tuple[int, int, str]]:
        """The model's ``(chunk id, line count, text)`` console chunks, in chunk order."""

    def get_reply(self, scope: str) -> StoredReply | None:
        """The reply remembered under an idempotency scope, or None."""

    def put_reply(self, scope: str, reply: StoredReply) -> None:
        """Remember a reply under an idempotency scope."""

    def get_key(self, digest: str) -> KeyRecord | None:
        """The key whose SHA-256 digest is ``digest``, or None."""

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a key record."""

    def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""

    def close(self) -> None:
        """Release files and connections."""


_CHUNK = 1 << 20
#: One reusable empty block (the hub enters a transaction for every call).
_NOTHING = contextlib.nullcontext()


class UploadsInMemory:
    """Uploads waiting for promotion in a dict: for the stores one process owns.

    A restart of that process forgets them (the trainer's ``checkpoint_saved`` then gets
    404); the hub's lock serialises the calls.
    """

    _uploads: dict[str, Upload]

    def put_upload(self, path: str, upload: Upload) -> list[Staged]:
        """Keep ``upload`` under ``path``; the staged files pushed out, to discard."""
        dropped = []
        replaced = self._uploads.pop(path, None)
        if replaced is not None:
            dropped.append(replaced.staged)
        mine = [key for key, kept in self._uploads.items() if kept.model_id == upload.model_id]
        for key in mine[: max(0, len(mine) - UPLOADS_KEPT + 1)]:
            dropped.append(self._uploads.pop(key).staged)
        self._uploads[path] = upload
        return dropped

    def take_upload(self, path: str) -> Upload | None:
        """Forget and return the upload kept under ``path``, or None."""
        return self._uploads.pop(path, None)

    def model_uploads(self, model_id: str) -> dict[str, Upload]:
        """The model's uploads not yet promoted, oldest first."""
        return {key: kept for key, kept in self._uploads.items() if kept.model_id == model_id}

    def drop_uploads(self, model_id: str) -> None:
        """Forget the model's uploads not yet promoted and delete their files."""
        for key in self.model_uploads(model_id):
            self.discard_weights(self._uploads.pop(key).staged)

    def discard_weights(self, staged: Staged) -> None:
        """Drop staged weights (each store its own way)."""
        raise NotImplementedError


class MemoryStore(UploadsInMemory):
    """Keeps everything in dicts; nothing survives the process.

    Values go in and come out as they are (no copies): records and replies are frozen,
    and metrics are kept as the JSON text the client sent.
    """

    def __init__(self) -> None:
        self._models: dict[str, ModelRecord] = {}
        self._metrics: dict[str, dict[int, str]] = {}
        self._times: dict[str, dict[int, float]] = {}
        self._weights: dict[tuple[str, str], tuple[WeightsInfo, bytes]] = {}
        self._replies: dict[str, StoredReply] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._console: dict[str, dict[int, tuple[int, str]]] = {}
        self._uploads = {}

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to group: the hub serialises its writes, and dict writes cannot fail."""
        return _NOTHING

    def claim(self, name: str) -> None:
        """Nothing to hold: the hub's lock serialises its requests."""

    def get_model(self, model_id: str) -> ModelRecord | None:
        """The model's record, or None."""
        return self._models.get(model_id)

    def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model record."""
        self._models[record.id] = record

    def delete_model(self, model_id: str) -> bool:
        """Forget a model with its metrics and weights."""
        self._metrics.pop(model_id, None)
        self._times.pop(model_id, None)
        self._console.pop(model_id, None)
        self._weights.pop((model_id, "last"), None)
        self._weights.pop((model_id, "best"), None)
        return self._models.pop(model_id, None) is not None

    def list_models(self) -> list[ModelRecord]:
        """Every model, oldest first."""
        return sorted(self._models.values(), key=lambda r: r.created_at)

    def page_models(
        self, limit: int, before: tuple[float, str] | None = None, owner: str | None = None
    ) -> list[ModelRecord]:
        """Up to ``limit`` models, newest first, older than ``before``, of ``owner`` if given."""
        found = sorted(self._models.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        return [
            r
            for r in found
            if (before is None or (r.created_at, r.id) < before)
            and (owner is None or r.owner == owner)
        ][:limit]

    def put_metrics(
        self, model_id: str, metrics: Mapping[int, str], at: float | None = None
    ) -> None:
        """Insert or replace each epoch's metrics (an epoch keeps its first time)."""
        epochs = self._metrics.get(model_id)
        if epochs is None:
            epochs = self._metrics[model_id] = {}
        epochs.update(metrics)
        if at is not None:
            times = self._times.setdefault(model_id, {})
            for epoch in metrics:
                times.setdefault(epoch, at)

    def get_metrics(self, model_id: str) -> list[tuple[int, str]]:
        """The model's ``(epoch, JSON text)`` pairs, sorted by epoch."""
        return sorted(self._metrics.get(model_id, {}).items())

    def metric_times(self, model_id: str) -> dict[int, float]:
        """When each epoch's metrics first came."""
        return dict(self._times.get(model_id, {}))

    def stage_weights(self, source: Source) -> Staged:
        """Hash the bytes (reading a stream whole: this store keeps blobs in memory anyway)."""
        if isinstance(source, bytes):
            data = source
        else:
            data = b"".join(iter(lambda: source.read(_CHUNK), b""))
        return Staged(hashlib.sha256(data).hexdigest(), len(data), data)

    def commit_weights(self, model_id: str, kind: WeightsKind, staged: Staged) -> None:
        """Keep the staged bytes as the model's ``kind`` file."""
        assert isinstance(staged.handle, bytes)
        self._weights[(model_id, kind)] = (WeightsInfo(staged.sha256, staged.size), staged.handle)

    def discard_weights(self, staged: Staged) -> None:
        """Nothing to clean up: staged bytes are garbage once unreferenced."""

    def weights_info(self, model_id: str, kind: WeightsKind) -> WeightsInfo | None:
        """Digest and size of the model's ``kind`` file, or None."""
        entry = self._weights.get((model_id, kind))
        return None if entry is None else entry[0]

    def open_weights(self, model_id: str, kind: WeightsKind) -> bytes | IO[bytes] | None:
        """The model's ``kind`` file as bytes, or None."""
        entry = self._weights.get((model_id, kind))
        return None if entry is None else entry[1]

    def read_weights(
        self, model_id: str, kind: WeightsKind
    ) -> tuple[WeightsInfo, bytes | IO[bytes]] | None:
        """The ``kind`` file's digest and bytes (one entry: always the same upload's)."""
        return self._weights.get((model_id, kind))

    def put_console(self, model_id: str, chunk_id: int, lines: int, text: str) -> bool:
        """Keep a console chunk unless one with that id is kept already."""
        chunks = self._console.setdefault(model_id, {})
        if chunk_id in chunks:
            return False
        chunks[chunk_id] = (lines, text)
        return True

    def get_console(self, model_id: str) -> list[tuple[int, int, str]]:
        """The model's console chunks, in chunk order."""
        return [(c, n, t) for c, (n, t) in sorted(self._console.get(model_id, {}).items())]

    def get_reply(self, scope: str) -> StoredReply | None:
        """The reply remembered under ``scope``, or None."""
        return self._replies.get(scope)

    def put_reply(self, scope: str, reply: StoredReply) -> None:
        """Remember a reply under ``scope``."""
        self._replies[scope] = reply

    def get_key(self, digest: str) -> KeyRecord | None:
        """The key whose digest is ``digest``, or None."""
        return self._keys.get(digest)

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a key record."""
        self._keys[record.digest] = record

    def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    def close(self) -> None:
        """Nothing to release."""
