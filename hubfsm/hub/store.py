"""The small storage interface the hub's domain logic needs, and a store in dicts.

The domain (:mod:`hubfsm.hub.domain`) decides; a store only remembers. Three stores exist:
:class:`MemoryStore` here, fast enough for a simulated 300-epoch session in milliseconds
(simulations and tests); :class:`~hubfsm.hub.store_sqlite.SqliteStore` for the local hub
server; :class:`~hubfsm.hub.store_postgres.PostgresStore` for a team's.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import IO, Literal, Protocol

from hubfsm.hub.keys import KeyRecord
from hubfsm.hub.stored import (
    ModelRecord,
    Staged,
    StoredReply,
    Uploads,
    UploadsInMemory,
    WeightsInfo,
)

#: The two weight files a model can have: the last epoch checkpoint and the best (final) one.
WeightsKind = Literal["last", "best"]

#: A request body source: bytes in memory, or a binary stream to read in chunks.
Source = bytes | IO[bytes]


class Store(Protocol):
    """The storage the hub's domain logic needs; every method is short and thread-safe."""

    @property
    def uploads(self) -> Uploads:
        """The Platform uploads waiting for the event that promotes them."""

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


class MemoryStore:
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
        self.uploads = UploadsInMemory(self.discard_weights)

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
