"""One real ultralytics 8.4 training reporting to Platform through hubfsm's callbacks.

Usage: ``python hubfsm_platform_worker.py DATA [--resume LAST] [--hold]``; prints ``best PATH``
(the final weights) last. ``--resume LAST`` continues the run of those weights. The
Platform root and key come from the environment (``ULTRALYTICS_PLATFORM_URL``,
``ULTRALYTICS_API_KEY``), as for ultralytics' own callbacks, which ``install()`` replaces.

``--hold`` takes the fake Platform down (``POST /_control``) when epoch 1 starts, once
what came before has landed, and at the start of epoch 2 prints ``held`` and sleeps, for
the test to kill the process there.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request


def _down(root: str) -> None:
    request = urllib.request.Request(
        f"{root}/_control", data=json.dumps({"down": True}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def main() -> None:
    import os

    data = sys.argv[1]
    last = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None

    import ultralytics.utils
    from ultralytics import YOLO

    for name, value in (("workers", 0), ("plots", False), ("amp", False), ("verbose", False)):
        ultralytics.utils.DEFAULT_CFG_DICT[name] = value
        setattr(ultralytics.utils.DEFAULT_CFG, name, value)

    from hubfsm.integrations.ultralytics import install

    ours = install()
    model = YOLO(last or "yolov8n.yaml")
    if "--hold" in sys.argv:
        root = os.environ["ULTRALYTICS_PLATFORM_URL"]

        def hold(trainer):
            if trainer.epoch == 1:
                # Epoch 0 has landed; what follows waits in the outbox.
                ours.session_of(trainer).flush(timeout=60.0)
                _down(root)
            elif trainer.epoch == 2:
                print("held", flush=True)
                time.sleep(600)

        model.add_callback("on_train_epoch_start", hold)
    if last is not None:
        model.train(resume=True)  # the checkpoint's own arguments: the same run directory
    else:
        model.train(
            data=data, epochs=3, imgsz=64, batch=4, device="cpu",
            project="owner/platform-test", name="run1", exist_ok=True,
        )  # fmt: skip
    # Where the run went (ultralytics puts it under its runs directory): for the test.
    print(f"best {model.trainer.best}", flush=True)


if __name__ == "__main__":
    main()
