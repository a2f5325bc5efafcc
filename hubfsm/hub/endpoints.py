"""The hub's endpoints: each checks one call's body and applies it to the store.

:class:`Endpoints` is the write side of :class:`~hubfsm.hub.domain.Hub`, one method per
API endpoint. :meth:`Hub.handle <hubfsm.hub.domain.Hub.handle>` has already checked the
key, the route and the JSON, and calls them under the hub's lock, inside a store
transaction; the weights upload alone takes the lock itself, so that receiving a large
file does not hold up other requests. Each also notes what it applied, for the audit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from hubfsm.hub import records
from hubfsm.hub.calls import (
    BadJson,
    HubCall,
    HubReply,
    UploadEntry,
    fail,
    is_model_id,
    ok,
    request_digest,
)
from hubfsm.hub.parse import (
    epoch_of,
    interrupted_of,
    metrics_text,
    name_of,
    notes_of,
    tags_of,
    upload_fields,
)
from hubfsm.hub.records import HubReads, new_record
from hubfsm.hub.store import WeightsKind
from hubfsm.hub.stored import ModelRecord, StoredReply


class Endpoints(HubReads):
    """The hub's endpoint handlers (a part of :class:`~hubfsm.hub.domain.Hub`)."""

    #: Note each applied metrics write, upload and heartbeat for :meth:`Hub.audit`. A
    #: served hub turns it off: the notes grow with every request, and only simulations
    #: and tests read them (the counts per endpoint are kept either way).
    audits: bool = True
    clock: Callable[[], float]
    new_id: Callable[[], str]
    _metrics_applied: Counter[tuple[str, int]]
    _uploads: list[UploadEntry]
    _heartbeats: dict[str, list[float]]
    _replayed: Counter[str]
    _reused: Counter[str]

    def _replay(self, scope: str | None, endpoint: str, digest: str | None) -> HubReply | None:
        """The reply stored under ``scope``, marked as a replay; the caller holds the lock.

        Only the request it answered is replayed (``digest`` is that of the request now):
        another request under the same key is refused with 422, never answered with the
        first one's reply, which would say a payload was applied when it was not.
        """
        stored = None if scope is None else self.store.get_reply(scope)
        if stored is None:
            return None
        if stored.request and stored.request != digest:
            self._reused[endpoint] += 1
            return fail(
                422,
                "Idempotency-Key reused with another request: this key already answered a "
                "request with another body; send a new request under a new key",
            )
        self._replayed[endpoint] += 1
        return HubReply(stored.status, stored.body, {"Idempotent-Replayed": "true"})

    def _model(self, principal: str, model_id: str | None) -> ModelRecord | HubReply:
        if not is_model_id(model_id):
            return fail(404, "no model with that id (ids are 20 letters and digits)")
        record = self.store.get_model(model_id)
        # Another key's model is as missing as no model: its id tells nothing.
        if record is None or record.owner not in (None, principal):
            return fail(404, f"no model {model_id}")
        return record

    def _trainable(self, principal: str, model_id: str | None) -> ModelRecord | HubReply:
        record = self._model(principal, model_id)
        if isinstance(record, ModelRecord) and record.status == "trained":
            return fail(409, f"model {record.id} is already trained; it takes no more uploads")
        return record

    def _auth(self, call: HubCall, who: str, model_id: str | None, kind: str | None) -> HubReply:
        return ok("API key is valid")

    def _get_model(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        record = self._model(who, model_id)
        if isinstance(record, HubReply):
            return record
        return ok("model found", self.view(record))

    def _get_metrics(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        record = self._model(who, model_id)
        if isinstance(record, HubReply):
            return record
        return ok("metrics found", self.metrics(record.id))

    def _create(self, call: HubCall, who: str, model_id: str | None, kind: str | None) -> HubReply:
        body = call.json
        if not isinstance(body, Mapping):
            return _bad_body(body)
        try:
            record = new_record(body, self._fresh_id(), self.clock(), who)
        except ValueError as error:
            return fail(400, str(error))
        self.store.put_model(record)
        return ok("model created", {"id": record.id})

    def annotate(
        self, model_id: str, who: str, changes: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Rename, tag or note a run (what ``changes`` names changes); its new view.

        None when ``who`` (a key's id) may not see the model, as for one that is not there.

        Raises:
            ValueError: A value is not one a run can have, or a key is none of ``name``,
                ``tags`` and ``notes``.
        """
        unknown = sorted(set(changes) - {"name", "tags", "notes"})
        if unknown:
            raise ValueError(f"only name, tags and notes change here, not {', '.join(unknown)}")
        fields: dict[str, Any] = {}
        if "name" in changes:
            fields["name"] = name_of(changes["name"])
        if "tags" in changes:
            fields["tags"] = tags_of(changes["tags"])
        if "notes" in changes:
            fields["notes"] = notes_of(changes["notes"])
        with self._lock, self.store.transaction():
            record = self.store.get_model(model_id)
            if record is None or record.owner not in (None, who):
                return None
            record = records.evolve(record, **fields)
            self.store.put_model(record)
        return self.view(record)

    def remove(self, model_id: str, who: str) -> bool:
        """Delete a run ``who`` (a key's id) may see, with its metrics and weights."""
        with self._lock, self.store.transaction():
            record = self.store.get_model(model_id)
            if record is None or record.owner not in (None, who):
                return False
            return self.store.delete_model(model_id)

    def _fresh_id(self) -> str:
        while True:
            candidate = self.new_id()
            if self.store.get_model(candidate) is None:
                return candidate

    def _upload_metrics(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        body = call.json
        # Bodies are dicts: the type test spares most calls the slower check against the ABC.
        if type(body) is not dict and not isinstance(body, Mapping):
            return _bad_body(body)
        if "type" not in body:
            return fail(400, "missing field 'type' (expected 'metrics')")
        if body["type"] != "metrics":
            return fail(400, "unsupported type; this endpoint takes type 'metrics'")
        metrics = body.get("metrics")
        if (type(metrics) is not dict and not isinstance(metrics, Mapping)) or not metrics:
            return fail(400, "'metrics' must be a non-empty object of epoch -> JSON string")
        parsed: dict[int, str] = {}
        for key, value in metrics.items():
            epoch = epoch_of(key)
            if epoch is None:
                return fail(400, "metrics keys must be epoch numbers (non-negative integers)")
            try:
                parsed[epoch] = metrics_text(value, epoch)
            except ValueError as error:
                return fail(400, str(error))
        record = self._trainable(who, model_id)
        if isinstance(record, HubReply):
            return record
        now = self.clock()
        self.store.put_metrics(record.id, parsed, now)
        if self.audits:
            for epoch in parsed:
                self._metrics_applied[(record.id, epoch)] += 1
        self.store.put_model(records.after_metrics(record, parsed, now))
        return ok("metrics saved")

    def _heartbeat(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        body = call.json
        if type(body) is not dict and not isinstance(body, Mapping):
            return _bad_body(body)
        agent = body.get("agent", "")
        if not isinstance(agent, str) or len(agent) > 200:
            return fail(400, "'agent' must be a string (at most 200 characters)")
        try:
            interrupted = interrupted_of(body.get("hubfsm"))
        except ValueError as error:
            return fail(400, str(error))
        record = self._model(who, model_id)
        if isinstance(record, HubReply):
            return record
        now = self.clock()
        agent_id = record.agent_id or self.new_id()
        self.store.put_model(records.after_heartbeat(record, agent_id, agent, now, interrupted))
        if self.audits:
            self._heartbeats.setdefault(record.id, []).append(now)
        return ok("heartbeat received", {"agentId": agent_id})

    def _download(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        record = self._model(who, model_id)
        if isinstance(record, HubReply):
            return record
        found = self.weights(record.id, "last" if kind == "last" else "best")
        if found is None:
            return fail(404, f"model {record.id} has no {kind} weights")
        info, content = found
        data = {"id": record.id, "kind": kind, "sha256": info.sha256, "size": info.size}
        return attrs.evolve(ok("weights found", data), content=content)

    def _upload(self, call: HubCall, who: str, model_id: str | None, scope: str | None) -> HubReply:
        """Take a weight file: called without the lock, which it takes around the file's receipt."""
        try:
            parsed = upload_fields(call.fields or {}, call.file_name, call.file is not None)
        except ValueError as error:
            return fail(400, str(error))
        upload_type, epoch, is_best, map50_95 = parsed
        assert call.file is not None  # checked by upload_fields
        with self._lock:
            # A retry of an upload that landed is answered once its file is in and hashed
            # (its digest says whether it is the same request), even if the model was
            # trained since.
            if scope is None or self.store.get_reply(scope) is None:
                record = self._trainable(who, model_id)
                if isinstance(record, HubReply):
                    return record
        # Receive the file outside the lock, then check again: the model may have changed.
        staged = self.store.stage_weights(call.file)
        digest = None if scope is None else request_digest(call, staged.sha256)
        try:
            with self._lock, self.store.transaction():
                replay = self._replay(scope, "upload_weights", digest)
                if replay is not None:
                    return replay
                record = self._trainable(who, model_id)
                if isinstance(record, HubReply):
                    return record
                now = self.clock()
                kind: WeightsKind = "last" if upload_type == "epoch" else "best"
                self.store.commit_weights(record.id, kind, staged)
                record = records.after_upload(record, upload_type, epoch, map50_95, now)
                self.store.put_model(record)
                if self.audits:
                    self._uploads.append(
                        UploadEntry(
                            record.id, upload_type, epoch, staged.sha256, staged.size, now, is_best
                        )
                    )
                reply = ok("weights saved", {"sha256": staged.sha256, "size": staged.size})
                if scope is not None and digest is not None:
                    self.store.put_reply(scope, StoredReply(reply.status, reply.body, digest))
                return reply
        finally:
            self.store.discard_weights(staged)


def _bad_body(body: object) -> HubReply:
    if isinstance(body, BadJson):
        return fail(400, f"body is not valid JSON: {body.reason}")
    return fail(400, "body must be a JSON object")
