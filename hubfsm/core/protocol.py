"""The HUB REST API as request values: one builder per endpoint, no I/O."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from hubfsm.transport import FilePart, Request

#: What the official client calls its agent in heartbeats.
AGENT_NAME = f"python-{sys.version.split()[0]}-hubfsm"


def auth() -> Request:
    """Check the API key."""
    return Request("POST", "/v1/auth")


def get_model(model_id: str) -> Request:
    """Read a model record."""
    return Request("GET", f"/v1/models/{model_id}")


def create_model(payload: Mapping[str, Any], *, key: str | None = None) -> Request:
    """Create a model from a ``config``/``dataset``/``lineage``/``meta`` payload."""
    return Request("POST", "/v1/models", json=dict(payload), idempotency_key=key)


def upload_metrics(model_id: str, metrics: Mapping[int, str], *, key: str) -> Request:
    """Upload metrics of several epochs; each value is that epoch's JSON-encoded dict."""
    body = {"type": "metrics", "metrics": {str(e): m for e, m in metrics.items()}}
    return Request("POST", f"/v1/models/{model_id}", json=body, idempotency_key=key)


def _scalar(value: Any) -> Any:
    # numpy and torch scalars know how to become Python numbers; anything else is kept
    # as its text rather than lost on the worker, far from the call that logged it
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def encode_metrics(metrics: Mapping[str, Any]) -> str:
    """Encode one epoch's metrics as the hub wants them: a JSON string."""
    return json.dumps(dict(metrics), sort_keys=True, default=_scalar)


def upload_checkpoint(
    model_id: str, epoch: int, file: FilePart, *, is_best: bool, key: str
) -> Request:
    """Upload epoch weights (``last.pt``)."""
    fields = {"epoch": str(epoch), "type": "epoch", "isBest": str(bool(is_best))}
    return Request(
        "POST", f"/v1/models/{model_id}/upload", fields=fields, file=file, idempotency_key=key
    )


def upload_final(
    model_id: str, epoch: int, file: FilePart, *, map50_95: float, key: str
) -> Request:
    """Upload the final weights (``best.pt``) with the model's mAP50-95."""
    fields = {"epoch": str(epoch), "type": "final", "map": repr(float(map50_95))}
    return Request(
        "POST", f"/v1/models/{model_id}/upload", fields=fields, file=file, idempotency_key=key
    )


def heartbeat(model_id: str, agent_id: str | None) -> Request:
    """Tell the hub the agent is alive."""
    body = {"agent": AGENT_NAME, "agentId": agent_id}
    return Request("POST", f"/v1/agent/heartbeat/models/{model_id}", json=body)


def _plain(value: Any) -> Any:
    # 8.2.0 puts the user's values in the JSON as they are (a bool cache, an int or list
    # imgsz, an int or list device); anything JSON cannot carry goes as its text.
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return _scalar(value)


def create_payload(filename: str, train_args: Mapping[str, Any]) -> dict[str, Any]:
    """The create-model payload for a local ``.pt``/``.yaml``, as ultralytics 8.2.0 builds it.

    Values keep their JSON types as the user gave them (``cache`` a bool or a string,
    ``imgsz`` an int or a list, ``device`` as given); what the user did not give takes
    the official defaults (``batch`` -1, ``epochs`` 300, ``imgsz`` 640, ``patience``
    100, ``device`` "", ``cache`` "ram"). The model is named after the file's base name,
    so no local directory reaches the hub.

    Args:
        filename: The local model file the identifier named.
        train_args: Training arguments in ultralytics' names (``data``, ``epochs``,
            ``batch``, ``imgsz``, ``patience``, ``device``, ``cache``), as the user gave
            them: ``data`` is sent as given, not as a trainer resolved it.
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0]
    payload: dict[str, Any] = {
        "config": {
            "batchSize": _plain(train_args.get("batch", -1)),
            "epochs": _plain(train_args.get("epochs", 300)),
            "imageSize": _plain(train_args.get("imgsz", 640)),
            "patience": _plain(train_args.get("patience", 100)),
            "device": _plain(train_args.get("device", "")),
            "cache": _plain(train_args.get("cache", "ram")),
        },
        "dataset": {"name": _plain(train_args.get("data"))},
        "lineage": {"architecture": {"name": stem}, "parent": {}},
        "meta": {"name": base},
    }
    if base.lower().endswith(".pt"):
        payload["lineage"]["parent"]["name"] = base
    return payload
