"""One unmodified ultralytics 8.4 training that reports to Platform, run in its own process.

Usage: ``python platform_worker.py DATA PROJECT NAME EPOCHS``

Nothing of hubfsm is imported: ultralytics' own Platform callbacks do the reporting, to
``ULTRALYTICS_PLATFORM_URL`` with ``ULTRALYTICS_API_KEY`` from the environment. The
environment must not look like pytest's (ultralytics then reports nothing). At the end it
writes ``result.json``: the run directory and the trainer's last epoch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    data, project, name, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(
        data=data,
        project=project,
        name=name,
        epochs=epochs,
        imgsz=32,
        batch=4,
        device="cpu",
        workers=0,
        plots=False,
        amp=False,
        seed=0,
        verbose=False,
    )
    trainer = model.trainer
    assert trainer is not None
    result = {"save_dir": str(Path(trainer.save_dir).resolve()), "epoch": trainer.epoch}
    Path("result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
