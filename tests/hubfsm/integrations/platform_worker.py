"""One unmodified ultralytics 8.4 training that reports to Platform, run in its own process.

Usage: ``python platform_worker.py DATA PROJECT NAME EPOCHS [--hold-at EPOCH | --resume LAST]``

Nothing of hubfsm is imported: ultralytics' own Platform callbacks do the reporting, to
``ULTRALYTICS_PLATFORM_URL`` with ``ULTRALYTICS_API_KEY`` from the environment. The
environment must not look like pytest's (ultralytics then reports nothing).

``--hold-at EPOCH`` stops the process as that epoch starts, when the earlier epoch's
checkpoint is on disk and its metrics on their way: it writes the path of ``last.pt`` to
``held`` and sleeps, so the test can kill it there. ``--resume LAST`` resumes that
checkpoint (``resume=True``). At the end it writes ``result.json``: the run directory and
the trainer's last epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("data", "project", "name"):
        parser.add_argument(name)
    parser.add_argument("epochs", type=int)
    parser.add_argument("--hold-at", type=int)
    parser.add_argument("--resume")
    options = parser.parse_args()
    from ultralytics import YOLO

    if options.resume:
        model = YOLO(options.resume)
        model.train(resume=True)
    else:
        model = YOLO("yolov8n.yaml")
        if options.hold_at is not None:

            def hold(trainer: Any) -> None:
                # At an epoch's start: ultralytics' callbacks of the epoch before have run
                # (a model's own callbacks run before the Platform ones of the same event).
                if trainer.epoch == options.hold_at:
                    Path("held").write_text(str(Path(trainer.last).resolve()))
                    while True:
                        time.sleep(1)

            model.add_callback("on_train_epoch_start", hold)
        model.train(
            data=options.data,
            project=options.project,
            name=options.name,
            epochs=options.epochs,
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
