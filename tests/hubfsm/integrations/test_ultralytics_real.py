"""A real ultralytics training against the real local hub, over loopback HTTP.

Slow (a YOLO model trains on CPU) and optional: skipped when ultralytics is not installed.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from hubfsm.hub.server import LocalHub
from hubfsm.integrations.ultralytics import add_callbacks

EPOCHS = 2
SIZE = 64


def synthetic_dataset(root: Path, seed: int = 0) -> Path:
    """A few 64x64 images with one coloured box each, labelled in YOLO format."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for split, count in (("train", 8), ("val", 4)):
        images = root / "images" / split
        labels = root / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(count):
            w, h = rng.randint(16, 40), rng.randint(16, 40)
            x, y = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
            image = Image.new("RGB", (SIZE, SIZE), (rng.randint(0, 80),) * 3)
            ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], fill=(230, 40, 40))
            image.save(images / f"{i}.jpg")
            cx, cy = (x + w / 2) / SIZE, (y + h / 2) / SIZE
            (labels / f"{i}.txt").write_text(f"0 {cx:.6f} {cy:.6f} {w / SIZE:.6f} {h / SIZE:.6f}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return data


@pytest.mark.slow
def test_a_real_yolo_training_lands_on_the_local_hub(tmp_path, monkeypatch):
    config_dir = tmp_path / "ultralytics-config"
    config_dir.mkdir()
    # ultralytics probes the internet at import and fetches a font for datasets unless
    # one is there; keep it offline, with its settings in the test's directory.
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(config_dir))
    (config_dir / "Arial.ttf").write_bytes(b"")
    # ultralytics 8.2.0 predates torch 2.6, which loads only plain tensors by default; the
    # checkpoints it reloads are this test's own.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    try:
        pytest.importorskip("ultralytics", reason="ultralytics is not installed")
    except Exception as exc:  # installed, but e.g. its torchvision was built for another torch
        pytest.skip(f"ultralytics is installed but does not import: {type(exc).__name__}: {exc}")
    import numpy
    from ultralytics import YOLO

    if not hasattr(numpy, "trapz"):
        pytest.skip(f"ultralytics 8.2.0 needs numpy.trapz, which numpy {numpy.__version__} lacks")

    data = synthetic_dataset(tmp_path / "data")
    with LocalHub(tmp_path / "hub") as local:
        model = YOLO("yolov8n.yaml")
        callbacks = add_callbacks(
            model, api_key=local.api_key, api_root=local.url, web_root=local.url
        )
        model.train(
            data=str(data),
            epochs=EPOCHS,
            imgsz=SIZE,
            batch=4,
            workers=0,
            device="cpu",
            plots=False,
            amp=False,
            project=str(tmp_path / "runs"),
            name="train",
            exist_ok=True,
            seed=0,
            verbose=False,
        )
        trainer = model.trainer
        assert callbacks.session is None  # closed at the end of training
        assert trainer.hub_session is None  # ultralytics' own client stayed out
        hub = local.hub
        (created,) = hub.models()
        model_id = created["id"]
        record = hub.record(model_id)
        assert record["cfg"] == "yolov8n.yaml" and record["epochs"] == EPOCHS
        assert record["status"] == "trained"
        rows = {row["epoch"]: row["metrics"] for row in hub.metrics(model_id)}
        assert sorted(rows) == list(range(EPOCHS))
        losses = {"train/box_loss", "train/cls_loss", "train/dfl_loss"}
        validation = {"metrics/mAP50(B)", "metrics/mAP50-95(B)"}
        info = {"model/parameters", "model/GFLOPs", "model/speed_PyTorch(ms)"}
        assert losses | validation | info | {"val/box_loss"} <= set(rows[0])
        # The last epoch is replaced by the final validation of best.pt, which has no
        # validation losses, just as ultralytics' own callbacks send it.
        assert losses | validation <= set(rows[EPOCHS - 1])
        assert not info & set(rows[EPOCHS - 1])
        uploads = hub.audit().uploads
        assert any(u.type == "epoch" for u in uploads)
        (final,) = [u for u in uploads if u.type == "final"]
        assert final.sha256 == hashlib.sha256(Path(trainer.best).read_bytes()).hexdigest()
        assert record["map"] == pytest.approx(trainer.metrics["metrics/mAP50-95(B)"], abs=1e-6)
