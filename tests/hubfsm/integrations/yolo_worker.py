"""One real ultralytics training against a hub, run in its own process by the tests.

Usage: ``python yolo_worker.py MODE IDENTIFIER DATA [--hold EVENT:EPOCH] [--epochs N]``

MODE is ``hub`` (``install()``, then ``YOLO(IDENTIFIER).train()`` with the hub's
arguments), ``yaml`` (``install()``, then ``YOLO(IDENTIFIER).train(data=DATA, ...)``
creating the model), or ``offline`` (``add_callbacks`` with an offline session on the
model IDENTIFIER; ``hubfsm sync`` sends it later). The hub's URLs and key come from the
environment (``ULTRALYTICS_HUB_API``, ``ULTRALYTICS_HUB_WEB``, ``HUB_API_KEY``).

``--hold EVENT:EPOCH`` stops the process in that trainer event from that epoch on (it
writes ``held`` in the working directory and sleeps) so the test can kill it there.
At the end it writes ``result.json``: the trainer's best and last weights.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("hub", "yaml", "offline"))
    parser.add_argument("identifier")
    parser.add_argument("data")
    parser.add_argument("--hold", default="")
    parser.add_argument("--epochs", type=int, default=2)
    options = parser.parse_args()

    import ultralytics.utils
    from ultralytics import YOLO

    # The hub's arguments replace whatever train() is given, so the machine's limits go
    # into ultralytics' defaults: no dataloader workers, no plots.
    for name, value in (("workers", 0), ("plots", False), ("amp", False), ("verbose", False)):
        ultralytics.utils.DEFAULT_CFG_DICT[name] = value
        setattr(ultralytics.utils.DEFAULT_CFG, name, value)

    import hubfsm
    from hubfsm.integrations import ultralytics as integration

    local = {
        "data": options.data,
        "epochs": options.epochs,
        "imgsz": 64,
        "batch": 4,
        "device": "cpu",
        "seed": 0,
    }
    session = None
    if options.mode == "offline":
        model = YOLO("yolov8n.yaml")
        session = hubfsm.open(options.identifier, offline=True)
        hold(model, options.hold)
        # The session is given, so the callbacks finish it and leave closing to us: the
        # kill below comes after the final weights were recorded, before any close.
        integration.add_callbacks(model, session)
    else:
        if options.mode == "yaml":
            # The key as 'yolo login' keeps it: 8.3 creates hub models from a local file
            # only with a key in its settings (8.2.0 takes HUB_API_KEY too).
            ultralytics.utils.SETTINGS.update({"api_key": os.environ.pop("HUB_API_KEY")})
        integration.install()
        model = YOLO(options.identifier)
        hold(model, options.hold)
    if options.mode == "hub":
        model.train()
    else:
        model.train(**local)
    trainer = model.trainer
    # No signal handler left behind, and hub-sdk never loaded (so it sent nothing).
    clean = (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        and "hub_sdk" not in sys.modules
    )
    result = {
        "best": str(trainer.best),
        "last": str(trainer.last),
        "epoch": trainer.epoch,
        "clean": clean,
    }
    Path("result.json").write_text(json.dumps(result))
    if options.hold.startswith("end"):
        held()
    if session is not None:
        session.close()


def held() -> None:
    Path("held").write_text(str(os.getpid()))
    time.sleep(600)  # the test kills the process here
    raise SystemExit("not killed within 600 s")


def hold(model: object, spec: str) -> None:
    if not spec or spec.startswith("end"):
        return
    event, _, epoch = spec.partition(":")

    def maybe_hold(trainer: object) -> None:
        if int(getattr(trainer, "epoch", 0)) >= int(epoch or 0):
            held()

    model.add_callback(event, maybe_hold)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
