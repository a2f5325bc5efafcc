"""What the hub shows without changing anything: model records, metrics, weight files.

:class:`HubReads` is the read side of :class:`~hubfsm.hub.domain.Hub`: the API replies
build their JSON with it, and the pages (:mod:`hubfsm.hub.web`) and the simulator read the
hub through it. Each read takes the hub's lock, so it sees no write half done.
"""

from __future__ import annotations

import json
import threading
from typing import IO, Any

from hubfsm.hub import records
from hubfsm.hub.signing import UrlSigner, file_name
from hubfsm.hub.store import ModelRecord, Store, WeightsInfo, WeightsKind


class HubReads:
    """The hub's read side (a part of :class:`~hubfsm.hub.domain.Hub`).

    Attributes:
        store: Where the state lives.
        public_root: Prefix of the weight URLs in model records.
        signer: Signs those URLs; None leaves them unsigned.
    """

    store: Store
    public_root: str
    signer: UrlSigner | None
    _lock: threading.RLock

    def weights_info(self, model_id: str, kind: WeightsKind) -> WeightsInfo | None:
        """Digest and size of a model's weight file, or None."""
        with self._lock:
            return self.store.weights_info(model_id, kind)

    def record(self, model_id: str) -> dict[str, Any] | None:
        """The model record as ``GET /v1/models/{id}`` shows it, or None."""
        with self._lock:
            record = self.store.get_model(model_id)
        return None if record is None else self.view(record)

    def models(self) -> list[dict[str, Any]]:
        """Every model record, oldest first."""
        with self._lock:
            found = self.store.list_models()
        return [self.view(record) for record in found]

    def metrics(self, model_id: str) -> list[dict[str, Any]]:
        """The model's metrics as ``GET /v1/models/{id}/metrics`` lists them."""
        with self._lock:
            rows = self.store.get_metrics(model_id)
        return [{"epoch": epoch, "metrics": json.loads(text)} for epoch, text in rows]

    def metric_times(self, model_id: str) -> dict[int, float]:
        """When each epoch's metrics first came to the hub (hub clock seconds)."""
        with self._lock:
            return self.store.metric_times(model_id)

    def weights(
        self, model_id: str, kind: WeightsKind
    ) -> tuple[WeightsInfo, bytes | IO[bytes]] | None:
        """A weight file's digest and content (close it if it is a stream), or None."""
        # One read of the store: the digest and the content belong to the same upload, also
        # when another process replaces the file meanwhile.
        with self._lock:
            return self.store.read_weights(model_id, kind)

    def weights_url(self, record: ModelRecord, kind: WeightsKind) -> str:
        """Where a client fetches a weight file without a key: a signed URL ending in its name."""
        name = file_name(kind, record.last_epoch if kind == "last" else None)
        if self.signer is not None:
            return self.signer.url(self.public_root, record.id, name)
        return f"{self.public_root}/files/{record.id}/{name}"

    def view(self, record: ModelRecord) -> dict[str, Any]:
        """The API's JSON view of a record (a fresh dict the caller may change)."""
        resume = self.weights_url(record, "last") if record.has_last_weights else None
        best = self.weights_url(record, "best") if record.has_best_weights else None
        return records.view(record, resume, best)
