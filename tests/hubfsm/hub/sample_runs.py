"""Runs shaped like ultralytics' (its metric names, curves and checkpoint habits), sent to a
local hub over HTTP, for the page tests and the docs' screenshots."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import attrs
import requests

from hubfsm.hub.server import LocalHub

TIMEOUT = 10


def epoch_metrics(epoch: int, epochs: int, seed: int) -> dict[str, float]:
    """One epoch's metrics as ultralytics 8.2.0 logs them for a detection model."""
    rng = random.Random(seed * 1000 + epoch)
    t = (epoch + 1) / epochs
    skill = 1 - math.exp(-3.2 * t) + 0.04 * seed
    noise = lambda scale: rng.gauss(0, scale)  # noqa: E731
    warm = min(1.0, (epoch + 1) / 3)
    lr = 0.01 * warm * (1 - 0.9 * t) / 100 * 3.3
    return {
        "train/box_loss": 1.62 - 0.55 * skill + noise(0.02),
        "train/cls_loss": 2.9 - 1.7 * skill + noise(0.04),
        "train/dfl_loss": 1.35 - 0.27 * skill + noise(0.01),
        "metrics/precision(B)": 0.42 + 0.36 * skill + noise(0.015),
        "metrics/recall(B)": 0.35 + 0.33 * skill + noise(0.015),
        "metrics/mAP50(B)": 0.33 + 0.38 * skill + noise(0.01),
        "metrics/mAP50-95(B)": 0.21 + 0.27 * skill + noise(0.008),
        "val/box_loss": 1.48 - 0.40 * skill + noise(0.015),
        "val/cls_loss": 2.4 - 1.3 * skill + noise(0.03),
        "val/dfl_loss": 1.30 - 0.22 * skill + noise(0.01),
        "lr/pg0": 0.07 * (1 - warm) + lr,
        "lr/pg1": lr,
        "lr/pg2": lr,
    }


def create(local: LocalHub, name: str, epochs: int, key: str | None = None) -> str:
    """A model as ultralytics 8.2.0 creates it."""
    body = {
        "config": {
            "batchSize": 16,
            "epochs": epochs,
            "imageSize": 640,
            "patience": 100,
            "device": "",
            "cache": False,
        },
        "dataset": {"name": "coco8.yaml"},
        "lineage": {"architecture": {"name": "yolov8n"}, "parent": {"name": "yolov8n.pt"}},
        "meta": {"name": name},
    }
    reply = requests.post(
        f"{local.url}/v1/models",
        json=body,
        headers={"x-api-key": key or local.api_key},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["id"])


def send_epochs(local: LocalHub, model_id: str, epochs: range, total: int, seed: int) -> None:
    """Metrics of ``epochs``, one request each, as the official client sends them."""
    for epoch in epochs:
        text = json.dumps(epoch_metrics(epoch, total, seed))
        reply = requests.post(
            f"{local.url}/v1/models/{model_id}",
            json={"type": "metrics", "metrics": {str(epoch): text}},
            headers={"x-api-key": local.api_key},
            timeout=TIMEOUT,
        )
        assert reply.status_code == 200, reply.text


def heartbeat(local: LocalHub, model_id: str) -> None:
    """A heartbeat from a Python 3.11 agent."""
    reply = requests.post(
        f"{local.url}/v1/agent/heartbeat/models/{model_id}",
        json={"agent": "python-3.11.7-local", "agentId": None},
        headers={"x-api-key": local.api_key},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200


def upload(local: LocalHub, model_id: str, epoch: int, data: bytes, final: bool = False) -> None:
    """An epoch checkpoint or the final weights."""
    name = "best.pt" if final else "last.pt"
    fields = {"epoch": str(epoch), "type": "final" if final else "epoch", "isBest": "true"}
    if final:
        fields = {"epoch": str(epoch), "type": "final", "map": "0.46"}
    reply = requests.post(
        f"{local.url}/v1/models/{model_id}/upload",
        headers={"x-api-key": local.api_key},
        data=fields,
        files={name: (name, data)},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text


def backdate(local: LocalHub, model_id: str, seconds_per_epoch: float) -> None:
    """Move a run's start back, as if each of its epochs had taken ``seconds_per_epoch``."""
    store = local.hub.store
    record = store.get_model(model_id)
    assert record is not None and record.updated_at is not None
    done = (record.metrics_epoch or 0) + 1
    changes: dict[str, Any] = {
        "started_at": record.updated_at - done * seconds_per_epoch,
        "created_at": record.updated_at - done * seconds_per_epoch - 30,
    }
    store.put_model(attrs.evolve(record, **changes))


def populate(local: LocalHub) -> dict[str, str]:
    """Three runs: one trained, one training with a stale checkpoint, one just created."""
    ids = {}
    ids["trained"] = create(local, "yolov8n-coco8-baseline", 30)
    heartbeat(local, ids["trained"])
    send_epochs(local, ids["trained"], range(30), 30, seed=0)
    upload(local, ids["trained"], 29, b"last" * 40_000)
    upload(local, ids["trained"], 29, b"best" * 60_000, final=True)
    backdate(local, ids["trained"], 38.0)

    ids["training"] = create(local, "yolov8n-coco8-mosaic-off", 40)
    heartbeat(local, ids["training"])
    send_epochs(local, ids["training"], range(1), 40, seed=1)
    # The official client uploads a checkpoint at most every 900 s: only epoch 0's is here.
    upload(local, ids["training"], 0, b"ckpt" * 50_000)
    send_epochs(local, ids["training"], range(1, 15), 40, seed=1)
    heartbeat(local, ids["training"])
    backdate(local, ids["training"], 41.0)

    ids["new"] = create(local, "yolov8s-coco8", 100)
    return ids
