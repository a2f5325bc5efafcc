"""``hubfsm demo``: a small real training run, reported to a hub through a Session.

The model is a logistic regression fitted by gradient descent on a synthetic data set,
with the standard library only, so the demo needs nothing beyond hubfsm itself.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from hubfsm.runtime.session import Session

#: Seconds each epoch waits, standing in for data loading and accelerator time.
PAUSE = 0.2

#: Seconds an interrupted demo spends sending what is left before it stops.
STOP_SECONDS = 3.0

ARCHITECTURE = """\
# A two-feature logistic regression: the demo's whole "architecture".
nc: 2
features: 2
layers: [[-1, 1, Linear, [2, 1]], [-1, 1, Sigmoid, []]]
"""


@attrs.frozen
class DemoResult:
    """What the demo ran and what the hub acknowledged."""

    model_id: str
    model_url: str
    epochs: int
    state: str
    stats: dict[str, Any]
    seconds: float


def _data(rng: random.Random, n: int) -> list[tuple[float, float, int]]:
    points = []
    for _ in range(n):
        label = rng.random() < 0.5
        cx, cy = (1.0, 1.0) if label else (-1.0, -0.5)
        points.append((rng.gauss(cx, 1.0), rng.gauss(cy, 1.0), int(label)))
    return points


def _loss_and_accuracy(
    w: Sequence[float], points: Sequence[tuple[float, float, int]]
) -> tuple[float, float]:
    loss = 0.0
    right = 0
    for x, y, label in points:
        p = 1.0 / (1.0 + math.exp(-(w[0] * x + w[1] * y + w[2])))
        p = min(max(p, 1e-9), 1 - 1e-9)
        loss -= label * math.log(p) + (1 - label) * math.log(1 - p)
        right += int((p >= 0.5) == bool(label))
    return loss / len(points), right / len(points)


def _epoch(w: list[float], points: Sequence[tuple[float, float, int]], lr: float) -> None:
    for x, y, label in points:
        p = 1.0 / (1.0 + math.exp(-(w[0] * x + w[1] * y + w[2])))
        g = p - label
        w[0] -= lr * g * x
        w[1] -= lr * g * y
        w[2] -= lr * g


def _save(path: Path, w: Sequence[float], epoch: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "weights": list(w)}))
    os.replace(tmp, path)


def train(
    *,
    api_key: str,
    api_root: str,
    web_root: str,
    epochs: int = 10,
    seed: int = 0,
    workdir: Path | None = None,
    out: TextIO,
    outbox: bool = True,
    outbox_dir: Path | None = None,
) -> DemoResult:
    """Create a model on the hub from a local architecture file and train it.

    Args:
        api_key: The hub's API key.
        api_root: The hub's API root.
        web_root: The hub's web root, for the model page URL.
        epochs: Epochs to train.
        seed: Seeds the data and the model.
        workdir: Where the architecture and weight files go (a temporary directory if None).
        out: Where progress lines go.
        outbox: Keep what the hub has not acknowledged on disk.
        outbox_dir: The outbox root (default: the session's default).
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubfsm-demo-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        arch = work / "tiny-logreg.yaml"
        arch.write_text(ARCHITECTURE)
        rng = random.Random(seed)
        train_args = {"data": "synthetic-2d", "epochs": epochs, "batch": 1, "imgsz": 2}
        with Session(
            str(arch),
            api_key=api_key,
            api_root=api_root,
            web_root=web_root,
            train_args=train_args,
            outbox=outbox,
            outbox_dir=outbox_dir,
            exit_timeout=STOP_SECONDS,
            # The seed is what reproduces the run: the hub shows it with the run.
            tags=[f"seed={seed}", "demo"],
            notes=f"hubfsm demo: {epochs} epochs of logistic regression, seed {seed}",
        ) as session:
            # The session's jitter and idempotency keys are left unseeded: two runs with
            # the same seed are two trainings, so they must not look like one retried.
            print(f"model created: {session.model_url}", file=out)
            try:
                _train(session, work, epochs, rng, out)
            except KeyboardInterrupt:
                print(
                    f"\ninterrupted: sending what the hub has not acknowledged yet "
                    f"(at most {STOP_SECONDS:g} s) ...",
                    file=sys.stderr,
                    flush=True,
                )
                raise
            return DemoResult(
                model_id=session.model_id or "",
                model_url=session.model_url,
                epochs=epochs,
                state=session.state,
                stats=session.stats(),
                seconds=time.monotonic() - started,
            )


def _train(session: Session, work: Path, epochs: int, rng: random.Random, out: TextIO) -> None:
    """The training loop: an epoch, its metrics and checkpoint, then the final weights."""
    train_set, val_set = _data(rng, 40_000), _data(rng, 4_000)
    w = [rng.gauss(0, 0.1) for _ in range(3)]
    best = work / "best.pt"
    best_accuracy = -1.0
    for epoch in range(epochs):
        _epoch(w, train_set, lr=0.05 / (1 + epoch))
        # A real epoch spends most of its time waiting on the data loader and
        # the accelerator, with the GIL released; this pure-Python model never
        # releases it, so it pauses as a real loop would.
        time.sleep(PAUSE)
        train_loss, _ = _loss_and_accuracy(w, train_set)
        val_loss, accuracy = _loss_and_accuracy(w, val_set)
        session.log_metrics(
            {
                "train/loss": round(train_loss, 6),
                "val/loss": round(val_loss, 6),
                "metrics/accuracy": round(accuracy, 6),
            },
            epoch=epoch,
        )
        # One file per epoch: without an outbox (the temporary hub) an upload reads the
        # file it was offered, so replacing one last.pt would change a checkpoint under
        # an upload being retried, and the retry would fail on the changed file.
        last = work / f"epoch{epoch}.pt"
        _save(last, w, epoch)
        is_best = accuracy > best_accuracy
        if is_best:
            best_accuracy = accuracy
            _save(best, w, epoch)
        session.save_checkpoint(last, epoch=epoch, is_best=is_best)
        print(
            f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, "
            f"val loss {val_loss:.4f}, accuracy {accuracy:.3f}",
            file=out,
        )
    print("uploading final weights ...", file=out)
    session.finish(best, epoch=epochs - 1, map50_95=best_accuracy)
