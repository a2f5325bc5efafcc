"""Platform's weight files: PUT to a signed URL, then promoted by the trainer's events.

ultralytics 8.4 uploads a file in three steps: ``POST /api/webhooks/models/upload``
answers with a signed ``uploadUrl`` (see :mod:`hubfsm.hub.platform`), the client PUTs the
raw file there (:meth:`PlatformFiles.receive_upload`, streamed to the store's staging),
and its ``checkpoint_saved`` event then names the ``uploadPath`` to promote the file to
the model's ``last`` weights; ``training_complete`` promotes the final one to ``best``.
``GET /api/models/{owner}/{project}/{model}/files`` lists signed download URLs.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Mapping
from typing import IO, Any

from hubfsm.hub import records
from hubfsm.hub.calls import HubReply, error
from hubfsm.hub.endpoints import Endpoints
from hubfsm.hub.parse import plain_number, whole_count
from hubfsm.hub.stored import ModelRecord, Staged, Upload

#: A file name a client may upload.
FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_UPLOAD_PATH = re.compile(r"uploads/([A-Za-z0-9]{20})/([0-9]{1,9})/([A-Za-z0-9]{20})/(.+)")


class PlatformFiles(Endpoints):
    """Platform's weight files (a part of :class:`~hubfsm.hub.domain.Hub`)."""

    _requests: Counter[str]

    def _files(self, who: str, owner: str, project: str, model: str) -> HubReply:
        wanted = f"{owner}/{project}"
        for record in reversed(self.store.list_models()):
            mine = record.owner == who and record.project == wanted
            if mine and model in (record.slug, record.id):
                files = []
                for kind in ("best", "last"):
                    info = self.store.weights_info(record.id, kind)
                    if info is not None:
                        url = self.weights_url(record, kind)
                        name = url.split("?", 1)[0].rsplit("/", 1)[-1]
                        files.append({"name": name, "size": info.size, "downloadUrl": url})
                return HubReply(200, {"files": files})
        return error(404, f"Model not found: {owner}/{project}/{model}")

    # Writes.

    def receive_upload(
        self, path: str, query: Mapping[str, str], source: bytes | IO[bytes]
    ) -> HubReply:
        """Take a file PUT to a signed upload URL (``/uploads/...``), streamed to staging.

        Called without the lock: the signature is checked before a byte is read, and the
        file is received outside the lock so a large upload holds up no other request.
        """
        with self._lock:
            self._requests["platform_upload_put"] += 1
        if self.signer is not None:
            problem = self.signer.check(path, query)
            if problem is not None:
                return error(403, problem)
        found = _UPLOAD_PATH.fullmatch(path.lstrip("/"))
        if found is None or FILENAME.fullmatch(found.group(4)) is None:
            return error(404, "No such upload location")
        model_id, run_id = found.group(1), int(found.group(2))
        with self._lock:
            if self.store.get_model(model_id) is None:
                return error(404, "No such upload location")
        staged = self.store.stage_weights(source)
        with self._lock:
            dropped = self.store.uploads.put(path.lstrip("/"), Upload(model_id, run_id, staged))
        for each in dropped:
            self.store.discard_weights(each)
        return HubReply(200, {})

    def _checkpoint_saved(
        self, record: ModelRecord, data: Mapping[str, Any]
    ) -> ModelRecord | HubReply:
        upload_path, model_path = data.get("uploadPath"), data.get("modelPath")
        if not isinstance(upload_path, str) or not isinstance(model_path, str):
            return error(400, "'uploadPath' and 'modelPath' must be the upload's strings")
        if model_path != stored_path(upload_path):
            return error(400, "'modelPath' is not the gcsPath of that uploadPath")
        if record.checkpoint_path == model_path:
            return record  # promoted already: a retry
        pending = self.store.uploads.of_model(record.id).get(upload_path)
        if pending is None:
            return error(404, "Nothing was uploaded to that uploadPath")
        run_id = data.get("runId")
        if run_id is not None and run_id != pending.run_id:
            return error(409, "That upload belongs to another run")
        if record.status == "trained":
            return error(409, f"Model {record.id} is already trained")
        self.store.uploads.take(upload_path)
        try:
            self.store.commit_weights(record.id, "last", pending.staged)
        except BaseException:
            # Refused (a full disk: 507): the event's retry promotes it, and its file
            # does not hold the disk's room meanwhile as nobody's. (A database store
            # rolls the take back itself.)
            with contextlib.suppress(Exception):
                if self.store.uploads.of_model(record.id).get(upload_path) is None:
                    for each in self.store.uploads.put(upload_path, pending):
                        self.store.discard_weights(each)
            raise
        epoch = record.metrics_epoch if record.metrics_epoch is not None else 0
        updated = records.after_upload(record, "epoch", epoch, None, self.clock())
        updated = records.evolve(updated, checkpoint_path=model_path)
        self.store.put_model(updated)
        return updated

    def _complete(self, record: ModelRecord, data: Mapping[str, Any]) -> ModelRecord | HubReply:
        results = data.get("results")
        if not isinstance(results, dict):
            return error(400, "'results' must be an object")
        model_path = results.get("modelPath")
        staged: Staged | None = None
        if isinstance(model_path, str) and model_path == record.checkpoint_path:
            content = self.store.open_weights(record.id, "last")
            if content is not None:
                try:
                    staged = self.store.stage_weights(content)
                finally:
                    if not isinstance(content, bytes):
                        content.close()
        elif isinstance(model_path, str):
            # An upload sent without a run (legacy callers) is promoted by the complete event.
            for path in self.store.uploads.of_model(record.id):
                taken = self.store.uploads.take(path) if stored_path(path) == model_path else None
                if taken is not None:
                    staged = taken.staged
        metrics = results.get("metrics")
        found = metrics.get("metrics/mAP50-95(B)") if isinstance(metrics, dict) else None
        map50_95 = float(found) if plain_number(found) and found is not None else None
        best_epoch = results.get("bestEpoch")
        epochs = [e for e in (record.metrics_epoch, best_epoch) if whole_count(e)]
        final_epoch = max(epochs) if epochs else 0
        now = self.clock()
        # A trained model promotes nothing more: what waits (a checkpoint the final
        # weights overtook between its PUT and its event) would never be deleted.
        self.store.uploads.drop(record.id)
        if staged is not None:
            try:
                self.store.commit_weights(record.id, "best", staged)
            finally:
                self.store.discard_weights(staged)
            updated = records.after_upload(record, "final", final_epoch, map50_95, now)
        else:
            updated = records.evolve(
                record, status="trained", final_epoch=final_epoch, map50_95=map50_95, updated_at=now
            )
        self.store.put_model(updated)
        return updated


def stored_path(upload_path: str) -> str:
    """Where an upload lives once promoted (``gcsPath``): ``models/...`` for ``uploads/...``."""
    return "models/" + upload_path.removeprefix("uploads/")
