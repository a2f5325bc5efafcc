"""The hub's domain logic: one call in, one reply out; no sockets, no wall clock.

:class:`Hub` answers the REST API of ``PROTOCOL.md`` over any :class:`~hubfsm.hub.store.Store`.
The HTTP server and the in-memory transport both turn their requests into a
:class:`HubCall` and send back the :class:`HubReply`. The hub also keeps an audit of what
it applied, so a simulation can check that nothing took effect twice.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, TypeGuard

import attrs

from hubfsm.hub.store import ModelRecord, Store, StoredReply, WeightsInfo, WeightsKind

ALPHABET = string.ascii_letters + string.digits


def id_factory(rng: random.Random) -> Callable[[], str]:
    """Make 20-character ``[A-Za-z0-9]`` ids from ``rng`` (deterministic when it is seeded)."""

    def new_id() -> str:
        return "".join(rng.choices(ALPHABET, k=20))

    return new_id


def is_model_id(text: str | None) -> TypeGuard[str]:
    """True for a string shaped like a model id: 20 ASCII letters and digits."""
    return text is not None and len(text) == 20 and text.isascii() and text.isalnum()


@attrs.frozen
class BadJson:
    """Stands in for a request body that was not valid JSON, so the hub can say why."""

    reason: str


@attrs.frozen
class HubCall:
    """One API request, as the hub sees it.

    Attributes:
        method: ``GET`` or ``POST`` (others get 405).
        path: The path without query string, such as ``/v1/models/abc``.
        api_key: The ``x-api-key`` header, or None.
        json: The decoded JSON body, None without one, or :class:`BadJson`.
        fields: Multipart form fields, or None.
        file_name: The multipart file part's name (``last.pt`` or ``best.pt``), or None.
        file: The file's bytes or a binary stream of them (read in chunks), or None.
        idempotency_key: The ``Idempotency-Key`` header, or None.
    """

    method: str
    path: str
    api_key: str | None = attrs.field(default=None, repr=False)
    json: object = None
    fields: Mapping[str, str] | None = None
    file_name: str | None = None
    file: bytes | IO[bytes] | None = attrs.field(default=None, repr=False)
    idempotency_key: str | None = None


@attrs.frozen
class HubReply:
    """The hub's answer.

    Attributes:
        status: The HTTP status.
        body: The envelope ``{"success", "message", "data"}``.
        headers: Extra response headers.
        content: A downloaded file (bytes, or a stream the receiver closes), else None.
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = attrs.field(factory=dict)
    content: bytes | IO[bytes] | None = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.status < 300


@attrs.frozen
class UploadEntry:
    """One applied weights upload, as the audit lists it."""

    model_id: str
    type: str
    epoch: int
    sha256: str
    size: int
    time: float
    is_best: bool = False


@attrs.frozen
class Audit:
    """What the hub applied, for invariant checks (a snapshot; it does not change later).

    Attributes:
        metrics_applied: How often each ``(model_id, epoch)`` metrics write was applied
            (idempotent replays excluded).
        uploads: Every applied weights upload, in order.
        heartbeats: The hub-clock times of each model's heartbeats.
        requests: Calls per endpoint (``unknown`` for unrouted paths), failures included.
        replayed: Idempotent replays per endpoint.
    """

    metrics_applied: Mapping[tuple[str, int], int]
    uploads: tuple[UploadEntry, ...]
    heartbeats: Mapping[str, tuple[float, ...]]
    requests: Mapping[str, int]
    replayed: Mapping[str, int]


def ok(message: str, data: Any = None) -> HubReply:
    """A 200 reply in the envelope."""
    body = {"success": True, "message": message, "data": {} if data is None else data}
    return HubReply(200, body)


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> HubReply:
    """An error reply in the envelope."""
    body = {"success": False, "message": message, "data": {}}
    return HubReply(status, body, headers if headers is not None else {})


# (resource, method) -> endpoint name; the resource comes from the path (see _route).
_ENDPOINTS = {
    ("auth", "POST"): "auth",
    ("models", "POST"): "create_model",
    ("model", "GET"): "get_model",
    ("model", "POST"): "upload_metrics",
    ("metrics", "GET"): "get_metrics",
    ("upload", "POST"): "upload_weights",
    ("weights", "GET"): "download_weights",
    ("heartbeat", "POST"): "heartbeat",
}
_ALLOWED = {
    resource: ", ".join(sorted(m for r, m in _ENDPOINTS if r == resource))
    for resource, _ in _ENDPOINTS
}


def _route(path: str) -> tuple[str, str | None, str | None]:
    """Split a path into (resource, model id, weights kind); resource ``unknown`` if none fits."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] or parts[1] != "v1":
        return "unknown", None, None
    rest = parts[2:]
    size = len(rest)
    if rest[0] == "models":
        if size == 1:
            return "models", None, None
        if size == 2:
            return "model", rest[1], None
        if size == 3 and rest[2] in ("metrics", "upload"):
            return rest[2], rest[1], None
        if size == 4 and rest[2] == "weights" and rest[3] in ("last", "best"):
            return "weights", rest[1], rest[3]
    elif size == 1 and rest[0] == "auth":
        return "auth", None, None
    elif size == 4 and rest[0] == "agent" and rest[1] == "heartbeat" and rest[2] == "models":
        return "heartbeat", rest[3], None
    return "unknown", None, None


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
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = new_id if new_id is not None else id_factory(random.Random(seed))
        self.public_root = public_root
        # Re-entrant: the read helpers below lock too, and endpoints call them under the lock.
        self._lock = threading.RLock()
        self._keys: dict[str, str] = {}
        self._metrics_applied: Counter[tuple[str, int]] = Counter()
        self._uploads: list[UploadEntry] = []
        self._heartbeats: dict[str, list[float]] = {}
        self._requests: Counter[str] = Counter()
        self._replayed: Counter[str] = Counter()
        self._handlers: dict[str, Callable[[HubCall, str | None, str | None], HubReply]] = {
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
        return f"Hub(store={type(self.store).__name__}, keys={len(self._keys)})"

    # ---- admin -----------------------------------------------------------------------

    def add_key(self, key: str) -> None:
        """Accept ``key`` from now on."""
        # Replies are remembered under a digest of the key, never the key itself.
        self._keys[key] = hashlib.sha256(key.encode()).hexdigest()[:24]

    def revoke_key(self, key: str) -> None:
        """Refuse ``key`` from now on (401)."""
        self._keys.pop(key, None)

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

    def view(self, record: ModelRecord) -> dict[str, Any]:
        """The API's JSON view of a record (a fresh dict the caller may change)."""
        # The web side's download, which needs no key (as the real hub's signed storage
        # URLs need none), so the official client can fetch what it is pointed at.
        base = f"{self.public_root}/models/{record.id}/weights"
        config = {
            "epochs": record.epochs,
            "batch": record.batch_size,
            "imgsz": record.imgsz,
            "patience": record.patience,
            "device": record.device,
            "cache": record.cache,
        }
        train_args = {"data": record.dataset, **{k: v for k, v in config.items() if v is not None}}
        created = datetime.datetime.fromtimestamp(record.created_at, tz=datetime.timezone.utc)
        return {
            "id": record.id,
            "name": record.name,
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "status": record.status,
            "has_last_weights": record.has_last_weights,
            "has_best_weights": record.has_best_weights,
            "is_pretrained": record.parent is not None,
            "cfg": record.cfg,
            "data": record.dataset,
            "parent": record.parent,
            "resume": f"{base}/last" if record.has_last_weights else None,
            # Before final weights exist, a pretrained model's weights are its parent's.
            "weights": f"{base}/best" if record.has_best_weights else record.parent,
            "batch_size": record.batch_size,
            "epochs": record.epochs,
            "imgsz": record.imgsz,
            "patience": record.patience,
            "device": record.device,
            "cache": record.cache,
            "train_args": train_args,
            "last_epoch": record.last_epoch,
            "final_epoch": record.final_epoch,
            "map": record.map50_95,
        }

    # ---- the one entry point ---------------------------------------------------------

    def handle(self, call: HubCall) -> HubReply:
        """Answer one API call."""
        resource, model_id, kind = _route(call.path)
        endpoint = _ENDPOINTS.get((resource, call.method), resource)
        with self._lock:
            self._requests[endpoint] += 1
        principal = self._keys.get(call.api_key) if call.api_key is not None else None
        if principal is None:
            return fail(401, "invalid or revoked API key" if call.api_key else "missing API key")
        if resource == "unknown":
            return fail(404, f"no such endpoint: {call.method} {call.path[:200]}")
        if (resource, call.method) not in _ENDPOINTS:
            allowed = _ALLOWED[resource]
            return fail(405, f"{call.method} not allowed here; use {allowed}", {"Allow": allowed})
        scope = None
        if call.method == "POST" and call.idempotency_key:
            scope = f"{principal}\x1f{call.path}\x1f{call.idempotency_key}"
        if endpoint == "upload_weights":
            return self._upload(call, model_id, scope)
        handler = self._handlers[endpoint]
        with self._lock, self.store.transaction():
            replay = self._replay(scope, endpoint)
            if replay is not None:
                return replay
            reply = handler(call, model_id, kind)
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

    def _model(self, model_id: str | None) -> ModelRecord | HubReply:
        if not is_model_id(model_id):
            return fail(404, "no model with that id (ids are 20 letters and digits)")
        record = self.store.get_model(model_id)
        return fail(404, f"no model {model_id}") if record is None else record

    def _trainable(self, model_id: str | None) -> ModelRecord | HubReply:
        record = self._model(model_id)
        if isinstance(record, ModelRecord) and record.status == "trained":
            return fail(409, f"model {record.id} is already trained; it takes no more uploads")
        return record

    # ---- endpoints (each runs under the lock, inside a store transaction) ---------------

    def _auth(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
        return ok("API key is valid")

    def _get_model(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
        record = self._model(model_id)
        if isinstance(record, HubReply):
            return record
        return ok("model found", self.view(record))

    def _get_metrics(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
        record = self._model(model_id)
        if isinstance(record, HubReply):
            return record
        return ok("metrics found", self.metrics(record.id))

    def _create(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
        body = call.json
        if not isinstance(body, Mapping):
            return _bad_body(body)
        try:
            record = _new_record(body, self._fresh_id(), self.clock())
        except ValueError as error:
            return fail(400, str(error))
        self.store.put_model(record)
        return ok("model created", {"id": record.id})

    def _fresh_id(self) -> str:
        while True:
            candidate = self.new_id()
            if self.store.get_model(candidate) is None:
                return candidate

    def _upload_metrics(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
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
            epoch = _epoch(key)
            if epoch is None:
                return fail(400, "metrics keys must be epoch numbers (non-negative integers)")
            if not isinstance(value, str) or not _is_json_object(value):
                return fail(400, f"metrics of epoch {epoch} must be a string holding a JSON object")
            parsed[epoch] = value
        record = self._trainable(model_id)
        if isinstance(record, HubReply):
            return record
        self.store.put_metrics(record.id, parsed)
        for epoch in parsed:
            self._metrics_applied[(record.id, epoch)] += 1
        if record.status == "new":
            self.store.put_model(attrs.evolve(record, status="training"))
        return ok("metrics saved")

    def _heartbeat(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
        body = call.json
        if not isinstance(body, Mapping):
            return _bad_body(body)
        if not isinstance(body.get("agent", ""), str):
            return fail(400, "'agent' must be a string")
        record = self._model(model_id)
        if isinstance(record, HubReply):
            return record
        agent_id = record.agent_id or self.new_id()
        if agent_id != record.agent_id or record.status == "new":
            status = "training" if record.status == "new" else record.status
            self.store.put_model(attrs.evolve(record, agent_id=agent_id, status=status))
        self._heartbeats.setdefault(record.id, []).append(self.clock())
        return ok("heartbeat received", {"agentId": agent_id})

    def _download(self, call: HubCall, model_id: str | None, kind: str | None) -> HubReply:
        record = self._model(model_id)
        if isinstance(record, HubReply):
            return record
        found = self.weights(record.id, "last" if kind == "last" else "best")
        if found is None:
            return fail(404, f"model {record.id} has no {kind} weights")
        info, content = found
        data = {"id": record.id, "kind": kind, "sha256": info.sha256, "size": info.size}
        return attrs.evolve(ok("weights found", data), content=content)

    def _upload(self, call: HubCall, model_id: str | None, scope: str | None) -> HubReply:
        parsed = _upload_fields(call)
        if isinstance(parsed, HubReply):
            return parsed
        upload_type, epoch, is_best, map50_95 = parsed
        assert call.file is not None  # checked by _upload_fields
        with self._lock:
            replay = self._replay(scope, "upload_weights")
            if replay is not None:
                return replay
            record = self._trainable(model_id)
            if isinstance(record, HubReply):
                return record
        # Receive the file outside the lock, then check again: the model may have changed.
        staged = self.store.stage_weights(call.file)
        try:
            with self._lock, self.store.transaction():
                replay = self._replay(scope, "upload_weights")
                if replay is not None:
                    return replay
                record = self._trainable(model_id)
                if isinstance(record, HubReply):
                    return record
                now = self.clock()
                kind: WeightsKind = "last" if upload_type == "epoch" else "best"
                self.store.commit_weights(record.id, kind, staged)
                if upload_type == "epoch":
                    status = "training" if record.status == "new" else record.status
                    record = attrs.evolve(
                        record, status=status, has_last_weights=True, last_epoch=epoch
                    )
                else:
                    record = attrs.evolve(
                        record,
                        status="trained",
                        has_best_weights=True,
                        final_epoch=epoch,
                        map50_95=map50_95,
                    )
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


# ---- request parsing -------------------------------------------------------------------

_INTS = (("batchSize", "batch_size"), ("epochs", "epochs"), ("imageSize", "imgsz"))
_TRUE = frozenset({"true", "True", "TRUE", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "0"})


def _bad_body(body: object) -> HubReply:
    if isinstance(body, BadJson):
        return fail(400, f"body is not valid JSON: {body.reason}")
    return fail(400, "body must be a JSON object")


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _epoch(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and 0 < len(value) < 10 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _section(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"'{name}' must be an object")
    return value


def _text(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"'{where}.{key}' must be a string")
    return str(value)


def _int(section: Mapping[str, Any], key: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'config.{key}' must be an integer")
    return value


def _new_record(body: Mapping[str, Any], model_id: str, now: float) -> ModelRecord:
    """Build a record from a create-model body; ValueError says what is wrong with it."""
    config = _section(body, "config")
    lineage = _section(body, "lineage")
    architecture = _text(_section(lineage, "architecture"), "name", "lineage.architecture")
    if architecture is None:
        raise ValueError("'lineage.architecture.name' is required (such as 'yolov8n')")
    cfg = architecture if architecture.endswith((".yaml", ".yml")) else f"{architecture}.yaml"
    ints = {field: _int(config, key) for key, field in _INTS}
    return ModelRecord(
        id=model_id,
        name=_text(_section(body, "meta"), "name", "meta") or architecture,
        created_at=now,
        cfg=cfg,
        dataset=_text(_section(body, "dataset"), "name", "dataset"),
        parent=_text(_section(lineage, "parent"), "name", "lineage.parent"),
        batch_size=ints["batch_size"],
        epochs=ints["epochs"],
        imgsz=ints["imgsz"],
        patience=_int(config, "patience"),
        device=_text(config, "device", "config"),
        cache=_text(config, "cache", "config"),
    )


def _upload_fields(call: HubCall) -> tuple[str, int, bool, float | None] | HubReply:
    """Check an upload's form: (type, epoch, isBest, map), or the 400 reply saying what is off."""
    fields = call.fields or {}
    upload_type = fields.get("type")
    if upload_type not in ("epoch", "final"):
        return fail(400, "field 'type' must be 'epoch' or 'final'")
    epoch = _epoch(fields.get("epoch"))
    if epoch is None:
        return fail(400, "field 'epoch' must be a non-negative integer")
    is_best = False
    map50_95 = None
    if upload_type == "epoch":
        flag = str(fields.get("isBest", "false"))
        if flag not in _TRUE and flag not in _FALSE:
            return fail(400, "field 'isBest' must be true or false")
        is_best = flag in _TRUE
    elif fields.get("map") not in (None, ""):
        try:
            map50_95 = float(str(fields["map"]))
        except ValueError:
            map50_95 = math.nan
        if not math.isfinite(map50_95):
            return fail(400, "field 'map' must be a finite number")
    expected = "last.pt" if upload_type == "epoch" else "best.pt"
    if call.file is None:
        return fail(400, f"missing file part '{expected}'")
    if call.file_name != expected:
        return fail(400, f"{upload_type} uploads carry one file part named '{expected}'")
    return upload_type, epoch, is_best, map50_95
