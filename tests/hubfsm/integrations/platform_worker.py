"""One real ultralytics 8.4 training reporting to Platform through hubfsm's callbacks.

Usage: ``python platform_worker.py DATA``; prints ``best PATH`` (the final weights) last.
The Platform root and key come from the environment (``ULTRALYTICS_PLATFORM_URL``,
``ULTRALYTICS_API_KEY``), as for ultralytics' own callbacks, which ``install()`` replaces.
"""

from __future__ import annotations

import sys


def main() -> None:
    data = sys.argv[1]
    import ultralytics.utils
    from ultralytics import YOLO

    for name, value in (("workers", 0), ("plots", False), ("amp", False), ("verbose", False)):
        ultralytics.utils.DEFAULT_CFG_DICT[name] = value
        setattr(ultralytics.utils.DEFAULT_CFG, name, value)

    from hubfsm.integrations.ultralytics import install

    install()
    model = YOLO("yolov8n.yaml")
    model.train(
        data=data, epochs=2, imgsz=64, batch=4, device="cpu", project="owner/platform-test",
        name="run1", exist_ok=True,
    )  # fmt: skip
    # Where the run went (ultralytics puts it under its runs directory): for the test.
    print(f"best {model.trainer.best}", flush=True)


if __name__ == "__main__":
    main()
