"""The hub's domain logic: one call in, one reply out; no sockets, no wall clock.

:class:`Hub` answers the REST API of ``PROTOCOL.md`` over any :class:`~hubfsm.hub.store.Store`.
The HTTP server and the in-memory transport both turn their requests into a
:class:`HubCall` and send back the :class:`HubReply`. The hub also keeps an audit of what
it applied, so a simulation can check that nothing took effect twice.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import attrs

from hubfsm.hub import keys as keyring
from hubfsm.hub import records
from hubfsm.hub.calls import (
    ALLOWED,
    ENDPOINTS,
    Audit,
    BadJson,
    HubCall,
    HubReply,
    UploadEntry,
    fail,
    id_factory,
    is_model_id,
    ok,
    route,
)
from hubfsm.hub.keys import ALPHABET, KeyRecord
from hubfsm.hub.parse import check_json, epoch_of, metrics_text, new_record, upload_fields
from hubfsm.hub.signing import UrlSigner, file_name
from hubfsm.hub.store import ModelRecord, Store, StoredReply, WeightsInfo, WeightsKind

__all__ = [
    "ALPHABET",
    "Audit",
    "BadJson",
    "Hub",
    "HubCall",
    "HubReply",
    "UploadEntry",
    "fail",
    "id_factory",
    "is_model_id",
    "ok",
]

#: How many keys' digests the hub remembers before it starts over.
_DIGESTS_KEPT = 64

#: ModelRecord's fields as (attribute, init argument), read once for _evolve_record.
_RECORD_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (a.name, a.alias or a.name) for a in attrs.fields(ModelRecord) if a.init
)


def _evolve_record(record: ModelRecord, **changes: Any) -> ModelRecord:
    """``attrs.evolve`` for the record every metrics upload replaces, without its lookups."""
    for name, alias in _RECORD_FIELDS:
        if alias not in changes:
            changes[alias] = getattr(record, name)
    return ModelRecord(**changes)


class Hub:
    """The hub: models, metrics, weights and heartbeats behind API keys.

    Thread-safe: writes are serialised by a lock, except the receiving of a weight file,
    which happens outside it so a large upload does not hold up other requests.

    Args:
        store: Where the state lives.
        clock: Seconds now (a virtual clock in simulations).
        new_id: Makes model and agent ids; by default drawn from ``random.Random(seed)``.
        seed: Seeds the default ``new_id``.
        public_root: Prefix of the weight URLs in model records, such as
            ``http://127.0.0.1:8000``.
        keys: API keys accepted from the start.
        signer: Signs the weight URLs of model records; without one they are unsigned
            ``{public_root}/files/...`` paths (simulations and tests).
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] | None = None,
        *,
        seed: int | None = 0,
        public_root: str = "",
        keys: Iterable[str] = (),
        signer: UrlSigner | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = new_id if new_id is not None else id_factory(random.Random(seed))
        self.public_root = public_root
        self.signer = signer
        # Re-entrant: the read helpers below lock too, and endpoints call them under the lock.
        self._lock = threading.RLock()
        self._metrics_applied: Counter[tuple[str, int]] = Counter()
        self._uploads: list[UploadEntry] = []
        self._heartbeats: dict[str, list[float]] = {}
        self._requests: Counter[str] = Counter()
        self._replayed: Counter[str] = Counter()
        # Key -> digest: every request carries the key, and hashing it each time showed up
        # in simulated sessions. Bounded; the digest is what the store is asked about.
        self._digests: dict[str, str] = {}
        self._handlers: dict[str, Callable[[HubCall, str, str | None, str | None], HubReply]] = {
            "auth": self._auth,
            "create_model": self._create,
            "get_model": self._get_model,
            "upload_metrics": self._upload_metrics,
            "get_metrics": self._get_metrics,
            "download_weights": self._download,
            "heartbeat": self._heartbeat,
        }
        for key in keys:
            self.add_key(key)

    def __repr__(self) -> str:
        return f"Hub(store={type(self.store).__name__})"

    # ---- admin -----------------------------------------------------------------------

    def add_key(self, key: str, label: str = "") -> KeyRecord:
        """Accept ``key`` from now on (again, if it was revoked)."""
        # The store keeps a digest of the key, never the key itself.
        record = keyring.record_for(key, label=label, now=self.clock())
        with self._lock, self.store.transaction():
            known = self.store.get_key(record.digest)
            if known is not None:
                record = attrs.evolve(known, revoked_at=None)
            self.store.put_key(record)
        return record

    def ensure_key(self, key: str, label: str = "") -> KeyRecord:
        """Accept ``key`` unless the hub knows it already (a revoked key stays revoked)."""
        with self._lock:
            known = self.store.get_key(keyring.digest(key))
            return known if known is not None else self.add_key(key, label)

    def revoke_key(self, key: str) -> None:
        """Refuse ``key`` from now on (401)."""
        known = self.store.get_key(keyring.digest(key))
        if known is not None:
            self.revoke(known.id)

    def revoke(self, key_id: str) -> KeyRecord | None:
        """Refuse the key with id ``key_id`` from now on; the revoked record, or None."""
        with self._lock, self.store.transaction():
            for known in self.store.list_keys():
                if known.id == key_id:
                    if known.revoked_at is None:
                        known = attrs.evolve(known, revoked_at=self.clock())
                        self.store.put_key(known)
                    return known
        return None

    def list_keys(self) -> list[KeyRecord]:
        """Every key the hub knows, revoked ones too, oldest first."""
        with self._lock:
            return self.store.list_keys()

    def principal(self, api_key: str | None) -> str | None:
        """The id of a valid ``api_key``, or None for a missing, unknown or revoked one."""
        if not api_key or len(api_key) > 200:
            return None
        digests = self._digests
        key_digest = digests.get(api_key)
        if key_digest is None:
            if len(digests) >= _DIGESTS_KEPT:  # a client trying many keys gains nothing
                digests.clear()
            key_digest = digests[api_key] = keyring.digest(api_key)
        with self._lock:
            known = self.store.get_key(key_digest)
        return known.id if known is not None and known.revoked_at is None else None

    def delete_model(self, model_id: str) -> bool:
        """Delete a model with its metrics and weights; False if there was none."""
        with self._lock:
            return self.store.delete_model(model_id)

    def weights_info(self, model_id: str, kind: WeightsKind) -> WeightsInfo | None:
        """Digest and size of a model's weight file, or None."""
        with self._lock:
            return self.store.weights_info(model_id, kind)

    def audit(self) -> Audit:
        """A snapshot of what the hub applied so far."""
        with self._lock:
            return Audit(
                metrics_applied=dict(self._metrics_applied),
                uploads=tuple(self._uploads),
                heartbeats={m: tuple(t) for m, t in self._heartbeats.items()},
                requests=dict(self._requests),
                replayed=dict(self._replayed),
            )

    def record(self, model_id: str) -> dict[str, Any] | None:
        """The model record as ``GET /v1/models/{id}`` shows it, or None."""
        with self._lock:
            record = self.store.get_model(model_id)
        return None if record is None else self.view(record)

    def models(self) -> list[dict[str, Any]]:
        """Every model record, oldest first."""
        with self._lock:
            records = self.store.list_models()
        return [self.view(record) for record in records]

    def metrics(self, model_id: str) -> list[dict[str, Any]]:
        """The model's metrics as ``GET /v1/models/{id}/metrics`` lists them."""
        with self._lock:
            rows = self.store.get_metrics(model_id)
        return [{"epoch": epoch, "metrics": json.loads(text)} for epoch, text in rows]

    def weights(
        self, model_id: str, kind: WeightsKind
    ) -> tuple[WeightsInfo, bytes | IO[bytes]] | None:
        """A weight file's digest and content (close it if it is a stream), or None."""
        with self._lock:  # so the digest and the content belong to the same upload
            info = self.store.weights_info(model_id, kind)
            content = self.store.open_weights(model_id, kind)
        if info is None or content is None:
            if content is not None and not isinstance(content, bytes):
                content.close()
            return None
        return info, content

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

    # ---- the one entry point ---------------------------------------------------------

    def handle(self, call: HubCall) -> HubReply:
        """Answer one API call."""
        resource, model_id, kind = route(call.path)
        endpoint = ENDPOINTS.get((resource, call.method), resource)
        with self._lock:
            self._requests[endpoint] += 1
        principal = self.principal(call.api_key)
        if principal is None:
            return fail(401, "invalid or revoked API key" if call.api_key else "missing API key")
        if resource == "unknown":
            return fail(404, f"no such endpoint: {call.method} {_safe(call.path[:200])}")
        if (resource, call.method) not in ENDPOINTS:
            allowed = ALLOWED[resource]
            return fail(405, f"{call.method} not allowed here; use {allowed}", {"Allow": allowed})
        if call.json is not None and not isinstance(call.json, BadJson):
            problem = check_json(call.json)
            if problem is not None:
                return fail(400, f"body is not valid JSON: {problem}")
        scope = None
        if call.method == "POST" and call.idempotency_key:
            scope = f"{principal}\x1f{call.path}\x1f{_safe(call.idempotency_key)}"
        if endpoint == "upload_weights":
            return self._upload(call, principal, model_id, scope)
        handler = self._handlers[endpoint]
        with self._lock, self.store.transaction():
            replay = self._replay(scope, endpoint)
            if replay is not None:
                return replay
            reply = handler(call, principal, model_id, kind)
            if scope is not None and reply.ok:
                self.store.put_reply(scope, StoredReply(reply.status, reply.body))
        return reply

    def _replay(self, scope: str | None, endpoint: str) -> HubReply | None:
        # Caller holds the lock.
        stored = None if scope is None else self.store.get_reply(scope)
        if stored is None:
            return None
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

    # ---- endpoints (each runs under the lock, inside a store transaction) ---------------

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

    def _fresh_id(self) -> str:
        while True:
            candidate = self.new_id()
            if self.store.get_model(candidate) is None:
                return candidate

    def _upload_metrics(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        body = call.json
        if not isinstance(body, Mapping):
            return _bad_body(body)
        if "type" not in body:
            return fail(400, "missing field 'type' (expected 'metrics')")
        if body["type"] != "metrics":
            return fail(400, "unsupported type; this endpoint takes type 'metrics'")
        metrics = body.get("metrics")
        if not isinstance(metrics, Mapping) or not metrics:
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
        self.store.put_metrics(record.id, parsed)
        for epoch in parsed:
            self._metrics_applied[(record.id, epoch)] += 1
        now = self.clock()
        highest = (
            max(parsed) if record.metrics_epoch is None else max(record.metrics_epoch, *parsed)
        )
        self.store.put_model(
            _evolve_record(
                record,
                status="training" if record.status == "new" else record.status,
                metrics_epoch=highest,
                started_at=record.started_at if record.started_at is not None else now,
                updated_at=now,
            )
        )
        return ok("metrics saved")

    def _heartbeat(
        self, call: HubCall, who: str, model_id: str | None, kind: str | None
    ) -> HubReply:
        body = call.json
        if not isinstance(body, Mapping):
            return _bad_body(body)
        agent = body.get("agent", "")
        if not isinstance(agent, str) or len(agent) > 200:
            return fail(400, "'agent' must be a string (at most 200 characters)")
        record = self._model(who, model_id)
        if isinstance(record, HubReply):
            return record
        now = self.clock()
        agent_id = record.agent_id or self.new_id()
        self.store.put_model(records.after_heartbeat(record, agent_id, agent, now))
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
        try:
            parsed = upload_fields(call.fields or {}, call.file_name, call.file is not None)
        except ValueError as error:
            return fail(400, str(error))
        upload_type, epoch, is_best, map50_95 = parsed
        assert call.file is not None  # checked by upload_fields
        with self._lock:
            replay = self._replay(scope, "upload_weights")
            if replay is not None:
                return replay
            record = self._trainable(who, model_id)
            if isinstance(record, HubReply):
                return record
        # Receive the file outside the lock, then check again: the model may have changed.
        staged = self.store.stage_weights(call.file)
        try:
            with self._lock, self.store.transaction():
                replay = self._replay(scope, "upload_weights")
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
                self._uploads.append(
                    UploadEntry(
                        record.id, upload_type, epoch, staged.sha256, staged.size, now, is_best
                    )
                )
                reply = ok("weights saved", {"sha256": staged.sha256, "size": staged.size})
                if scope is not None:
                    self.store.put_reply(scope, StoredReply(reply.status, reply.body))
                return reply
        finally:
            self.store.discard_weights(staged)


# ---- request parsing helpers ----------------------------------------------------------


def _bad_body(body: object) -> HubReply:
    if isinstance(body, BadJson):
        return fail(400, f"body is not valid JSON: {body.reason}")
    return fail(400, "body must be a JSON object")


def _safe(text: str) -> str:
    # A header or path with a lone surrogate must not break the JSON answer or the store.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
