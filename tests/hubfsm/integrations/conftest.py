"""Fixtures for the integrations: an in-memory hub and a trainer shaped like ultralytics'."""

from __future__ import annotations

import collections
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hubfsm.hub.domain import Hub
from tests.support import FAST, KEY, new_model
from transports.memory import InMemoryTransport

#: What ultralytics 8.2.0's DetectionTrainer and DetectionValidator name their numbers.
LOSS_NAMES = ("box_loss", "cls_loss", "dfl_loss")
VAL_KEYS = (
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
)
FINAL_KEYS = VAL_KEYS[:4]
TRAIN_KEYS = tuple(f"train/{name}" for name in LOSS_NAMES)
MODEL_INFO = {"model/parameters": 3157200, "model/GFLOPs": 8.857, "model/speed_PyTorch(ms)": 1.5}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ultralytics: needs a real ultralytics trainer (tools/test-ultralytics.sh)"
    )


class Counting(InMemoryTransport):
    """An in-memory transport that counts what it sends."""

    def __init__(self, hub: Hub, api_key: str) -> None:
        super().__init__(hub, api_key)
        self.sent: list[str] = []

    def send(self, request: Any) -> Any:
        self.sent.append(f"{request.method} {request.path}")
        return super().send(request)


class FakeTrainer:
    """The parts of ultralytics' ``BaseTrainer`` (8.2.0) that HUB callbacks touch, no torch.

    ``train()`` runs the callbacks in the order ``BaseTrainer._do_train`` does, including
    the second ``on_fit_epoch_end`` of ``final_eval`` (validation of best.pt).
    """

    def __init__(self, workdir: Path, *, model: str = "yolov8n.yaml", epochs: int = 3) -> None:
        self.args = types.SimpleNamespace(
            model=model,
            data="coco8.yaml",
            epochs=epochs,
            batch=16,
            imgsz=64,
            patience=100,
            device="cpu",
            cache=False,
            profile=False,
        )
        self.callbacks: dict[str, list[Callable[[Any], None]]] = collections.defaultdict(list)
        self.hub_session: Any = None
        self.epochs = epochs
        self.epoch = 0
        self.tloss: list[float] | None = None
        self.metrics: dict[str, float] | None = None
        self.fitness: float | None = None
        self.best_fitness: float | None = None
        self.loss_names = list(LOSS_NAMES)
        self.wdir = workdir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self.saved: dict[int, bytes] = {}

    def add_callback(self, event: str, callback: Callable[[Any], None]) -> None:
        self.callbacks[event].append(callback)

    def run_callbacks(self, event: str) -> None:
        for callback in self.callbacks.get(event, []):
            callback(self)

    def label_loss_items(
        self, loss_items: list[float] | None = None, prefix: str = "train"
    ) -> dict[str, float] | list[str]:
        keys = [f"{prefix}/{x}" for x in self.loss_names]
        if loss_items is not None:
            return dict(zip(keys, [round(float(x), 5) for x in loss_items], strict=True))
        return keys

    def validate(self, epoch: int) -> tuple[dict[str, float], float]:
        m = 0.1 + 0.05 * epoch
        metrics = dict(zip(VAL_KEYS, (0.5, 0.4, m + 0.2, m, 1.1, 2.2, 0.9), strict=True))
        # Validation peaks at epoch 1, so best.pt and last.pt differ at the end.
        if epoch >= 2:
            metrics["metrics/mAP50-95(B)"] = 0.1
        fitness = 0.1 * metrics["metrics/mAP50(B)"] + 0.9 * metrics["metrics/mAP50-95(B)"]
        return metrics, fitness

    def save_model(self) -> None:
        data = f"weights of epoch {self.epoch}".encode() * 64
        self.saved[self.epoch] = data
        self.last.write_bytes(data)
        if self.best_fitness == self.fitness:
            self.best.write_bytes(data)

    def train(self, *, fail_at: int | None = None, final_step_ahead: bool = False) -> None:
        """Run the callbacks as ultralytics does.

        ``final_step_ahead`` reports the final validation one epoch later, as 8.4's
        ``final_eval`` does (``epoch += 1`` around its ``on_fit_epoch_end``).
        """
        self.run_callbacks("on_pretrain_routine_start")
        self.run_callbacks("on_pretrain_routine_end")
        self.run_callbacks("on_train_start")
        for epoch in range(self.epochs):
            self.epoch = epoch
            self.run_callbacks("on_train_epoch_start")
            if epoch == fail_at:
                raise RuntimeError(f"CUDA out of memory at epoch {epoch}")
            self.tloss = [1.0 / (epoch + 1), 2.0 / (epoch + 1), 0.5 / (epoch + 1)]
            self.run_callbacks("on_train_epoch_end")
            self.metrics, self.fitness = self.validate(epoch)
            if not self.best_fitness or self.best_fitness < self.fitness:
                self.best_fitness = self.fitness
            self.save_model()
            self.run_callbacks("on_model_save")
            self.run_callbacks("on_fit_epoch_end")
        # final_eval: best.pt is validated on its own (so without validation losses) and
        # reported as the last epoch once more.
        final = (0.6, 0.5, 0.45, 0.25)
        self.metrics = dict(zip(FINAL_KEYS, final, strict=True))
        self.epoch += int(final_step_ahead)
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= int(final_step_ahead)
        self.run_callbacks("on_train_end")
        self.run_callbacks("teardown")


@pytest.fixture
def transport(hub: Hub) -> Counting:
    return Counting(hub, KEY)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., FakeTrainer]:
    def make(**options: Any) -> FakeTrainer:
        return FakeTrainer(tmp_path / "run", **options)

    return make


@pytest.fixture
def kit() -> Any:
    """Constants and helpers for the test modules (a conftest is not imported by name)."""
    return types.SimpleNamespace(
        KEY=KEY,
        FAST=FAST,
        TRAIN_KEYS=TRAIN_KEYS,
        VAL_KEYS=VAL_KEYS,
        FINAL_KEYS=FINAL_KEYS,
        MODEL_INFO=MODEL_INFO,
        Counting=Counting,
        new_model=new_model,
        eventually=eventually,
    )


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.005)
    return True


@pytest.fixture(autouse=True)
def _no_real_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A test runner started by a distributed launcher must not make these tests rank > 0.
    monkeypatch.delenv("RANK", raising=False)
    yield
