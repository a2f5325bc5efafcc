"""How a model record changes with each upload, and how the API shows it."""

from __future__ import annotations

import datetime
import json
import operator
from collections.abc import Mapping
from typing import Any

import attrs

from hubfsm.hub.store import ModelRecord

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
