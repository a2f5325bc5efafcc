"""A model record's life: made from a create body, changed by each call, shown by the API.

:class:`HubReads` is the read side of :class:`~hubfsm.hub.domain.Hub`: the API replies
build their JSON with it, and the pages (:mod:`hubfsm.hub.web`) and the simulator read the
hub through it. Each read takes the hub's lock, so it sees no write half done.
"""

from __future__ import annotations

import datetime
import json
import operator
import threading
from collections.abc import Mapping
from typing import IO, Any

import attrs

from hubfsm.hub.keys import UrlSigner, file_name
from hubfsm.hub.parse import MAX_INT, MAX_PARAMS, MAX_TEXT, notes_of, tags_of
from hubfsm.hub.store import Store, WeightsKind
from hubfsm.hub.stored import ModelRecord, WeightsInfo

#: Console text a model page shows, at most (its last characters).
CONSOLE_SHOWN = 256 * 1024

# ModelRecord's __init__ takes its fields in this order (none is keyword-only).
_INIT = [field for field in attrs.fields(ModelRecord) if field.init]
assert not any(field.kw_only for field in _INIT)
_VALUES = operator.attrgetter(*(field.name for field in _INIT))
_POSITION = {field.alias or field.name: index for index, field in enumerate(_INIT)}


def evolve(record: ModelRecord, **changes: Any) -> ModelRecord:
    """``attrs.evolve`` for model records, a few times faster.

    Every metrics upload and heartbeat replaces the record, and ``attrs.evolve`` (which
    looks up each field by name) showed in simulated sessions. This reads all fields in
    one call and passes them by position; the record's converters still run.
    """
    values = list(_VALUES(record))
    for name, value in changes.items():
        values[_POSITION[name]] = value
    return ModelRecord(*values)


def view(record: ModelRecord, resume: str | None, best: str | None) -> dict[str, Any]:
    """The API's JSON view of a record, with the URLs of its weight files (a fresh dict).

    Args:
        record: The stored record.
        resume: The signed URL of the last checkpoint, when there is one.
        best: The signed URL of the final weights, when there are some.
    """
    config = {
        "epochs": record.epochs,
        "batch": record.batch_size,
        "imgsz": _plain(record.imgsz),
        "patience": record.patience,
        "device": _plain(record.device),
        "cache": record.cache,
    }
    train_args = {"data": record.dataset, **{k: v for k, v in config.items() if v is not None}}
    epochs_seen = [e for e in (record.metrics_epoch, record.last_epoch) if e is not None]
    return {
        "id": record.id,
        "name": record.name,
        "created_at": _iso(record.created_at),
        "status": record.status,
        "has_last_weights": record.has_last_weights,
        "has_best_weights": record.has_best_weights,
        "is_pretrained": record.parent is not None,
        "cfg": record.cfg,
        "data": record.dataset,
        "parent": record.parent,
        "resume": resume,
        # Before final weights exist, a pretrained model's weights are its parent's.
        "weights": best if best is not None else record.parent,
        "batch_size": record.batch_size,
        "epochs": record.epochs,
        "imgsz": config["imgsz"],
        "patience": record.patience,
        "device": config["device"],
        "cache": record.cache,
        "train_args": train_args,
        # The latest epoch the hub heard of; the checkpoint may be older (its own limit).
        "last_epoch": max(epochs_seen) if epochs_seen else None,
        "checkpoint_epoch": record.last_epoch,
        "metrics_epoch": record.metrics_epoch,
        "final_epoch": record.final_epoch,
        "map": record.map50_95,
        "started_at": _iso(record.started_at),
        "updated_at": _iso(record.updated_at),
        "heartbeat_at": _iso(record.heartbeat_at),
        "agent": record.agent,
        "agent_id": record.agent_id,
        # Platform runs name their project, slug and run; HUB v1 runs have none.
        "protocol": "hub" if record.project is None else "platform",
        "project": record.project,
        "slug": record.slug,
        "run_id": record.run_id,
        "cancelled": record.cancelled,
        # Every argument the trainer gave (a hubfsm session sends them beside the wire's).
        "params": None if record.params is None else json.loads(record.params),
        "tags": list(record.tags),
        "notes": record.notes,
        # When and why the session said the run stopped before its end (hubfsm's field).
        "interrupted_at": _iso(record.interrupted_at),
        "interrupted_by": record.interrupted_by,
    }


def repeats_training(before: str | None, values: Mapping[str, Any]) -> bool:
    """True when ``values`` carry the training losses and lr of ``before`` (stored JSON).

    ultralytics' final validation of ``best.pt`` comes as the epoch after the last, with
    the last epoch's training losses and learning rate, since no training ran between;
    an epoch that trained never repeats every one of them exactly.
    """
    trained = {k: v for k, v in values.items() if k.startswith("train/") or k == "lr"}
    if before is None or not any(k.startswith("train/") for k in trained):
        return False
    earlier = json.loads(before)
    return all(k in earlier and earlier[k] == v for k, v in trained.items())


def after_metrics(record: ModelRecord, epochs: Mapping[int, str], now: float) -> ModelRecord:
    """The record after metrics of ``epochs`` arrived."""
    highest = max(epochs) if record.metrics_epoch is None else max(record.metrics_epoch, *epochs)
    return evolve(
        record,
        status="training" if record.status == "new" else record.status,
        metrics_epoch=highest,
        started_at=record.started_at if record.started_at is not None else now,
        updated_at=now,
    )


def after_heartbeat(
    record: ModelRecord, agent_id: str, agent: str, now: float, interrupted: str | None = None
) -> ModelRecord:
    """The record after a heartbeat from ``agent``.

    ``interrupted``: the reason a session's last heartbeat gave for stopping before the
    end; a heartbeat without one says the run goes on (resumed), and clears it.
    """
    return evolve(
        record,
        agent_id=agent_id,
        status="training" if record.status == "new" else record.status,
        started_at=record.started_at if record.started_at is not None else now,
        heartbeat_at=now,
        agent=agent or record.agent,
        interrupted_at=None if interrupted is None or record.status == "trained" else now,
        interrupted_by=None if record.status == "trained" else interrupted,
    )


def after_upload(
    record: ModelRecord, upload_type: str, epoch: int, map50_95: float | None, now: float
) -> ModelRecord:
    """The record after an epoch checkpoint or the final weights arrived."""
    started = record.started_at if record.started_at is not None else now
    if upload_type == "epoch":
        return evolve(
            record,
            status="training" if record.status == "new" else record.status,
            has_last_weights=True,
            last_epoch=epoch,
            started_at=started,
            updated_at=now,
        )
    return evolve(
        record,
        status="trained",
        interrupted_at=None,
        interrupted_by=None,
        has_best_weights=True,
        final_epoch=epoch,
        map50_95=map50_95,
        started_at=started,
        updated_at=now,
    )


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


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
    if len(str(value)) > MAX_TEXT:
        raise ValueError(f"'{where}.{key}' is longer than {MAX_TEXT} characters")
    return str(value)


def _is_int(value: object) -> bool:
    """True for an integer within ``MAX_INT`` either way (bools are not integers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT


#: Said of a config integer that is not one, or is out of range.
_INTEGER = f"an integer from -{MAX_INT} to {MAX_INT}"


def _int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise ValueError(f"'config.{key}' must be {_INTEGER}")
    return int(value)


def _imgsz(config: Mapping[str, Any]) -> int | tuple[int, ...] | None:
    value = config.get("imageSize")
    if value is None or _is_int(value):
        return value
    if isinstance(value, list) and 1 <= len(value) <= 2 and all(_is_int(v) for v in value):
        return tuple(value)
    raise ValueError(f"'config.imageSize' must be {_INTEGER}, or a list of one or two of them")


def _device(config: Mapping[str, Any]) -> str | int | tuple[int | str, ...] | None:
    value = config.get("device")
    if value is None or isinstance(value, str) or _is_int(value):
        if isinstance(value, str) and len(value) > 200:
            raise ValueError("'config.device' is too long")
        return value
    if isinstance(value, list) and len(value) <= 64 and all(_device_part(v) for v in value):
        return tuple(value)
    raise ValueError(f"'config.device' must be a string, {_INTEGER}, or a list of them")


def _device_part(value: object) -> bool:
    return _is_int(value) or (isinstance(value, str) and len(value) < 32)


def _cache(config: Mapping[str, Any]) -> str | bool | None:
    value = config.get("cache")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 20:
        return value
    raise ValueError("'config.cache' must be true, false, or a string such as 'ram' or 'disk'")


def _extension(body: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...], str | None]:
    """The ``hubfsm`` object a hubfsm session adds: (arguments as JSON text, tags, notes)."""
    extra = _section(body, "hubfsm")
    args = extra.get("trainArgs")
    params = None
    if args is not None:
        if not isinstance(args, Mapping):
            raise ValueError("'hubfsm.trainArgs' must be an object")
        params = json.dumps(args)
        if len(params) > MAX_PARAMS:
            raise ValueError(f"'hubfsm.trainArgs' is larger than {MAX_PARAMS} bytes of JSON")
    tags = tags_of(extra.get("tags"), "hubfsm.tags")
    return params, tags, notes_of(extra.get("notes"), "hubfsm.notes")


def new_record(body: Mapping[str, Any], model_id: str, now: float, owner: str) -> ModelRecord:
    """Build a record from a create-model body; ValueError says what is wrong with it.

    Beside the HUB v1 fields, the ``hubfsm`` object a hubfsm session sends to any hub but
    the public one is kept: every training argument, tags and notes.
    """
    params, tags, notes = _extension(body)
    config = _section(body, "config")
    lineage = _section(body, "lineage")
    architecture = _text(_section(lineage, "architecture"), "name", "lineage.architecture")
    if architecture is None:
        raise ValueError("'lineage.architecture.name' is required (such as 'yolov8n')")
    cfg = architecture if architecture.endswith((".yaml", ".yml")) else f"{architecture}.yaml"
    return ModelRecord(
        id=model_id,
        name=_text(_section(body, "meta"), "name", "meta") or architecture,
        created_at=now,
        cfg=cfg,
        dataset=_text(_section(body, "dataset"), "name", "dataset"),
        parent=_text(_section(lineage, "parent"), "name", "lineage.parent"),
        batch_size=_int(config, "batchSize"),
        epochs=_int(config, "epochs"),
        imgsz=_imgsz(config),
        patience=_int(config, "patience"),
        device=_device(config),
        cache=_cache(config),
        owner=owner,
        params=params,
        tags=tags,
        notes=notes,
    )


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

    def console(self, model_id: str) -> str:
        """The model's console output as one text (its last :data:`CONSOLE_SHOWN` characters)."""
        with self._lock:
            chunks = self.store.get_console(model_id)
        # A chunk is lines joined by newlines, usually without a last one.
        text = "".join(c if c.endswith("\n") else c + "\n" for _, _, c in chunks if c)
        return text[-CONSOLE_SHOWN:]

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
        return view(record, resume, best)
