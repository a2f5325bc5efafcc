"""A stand-in trainer with hubfsm's Platform callbacks, held mid-run for a signal.

Usage: ``python platform_signal_worker.py OUTBOX [--to-the-end]``. Epoch 0 lands on an
in-memory fake Platform; then the fake answers 503, epoch 1 waits in the outbox, and the
script prints ``held`` and sleeps, for the test to send it SIGTERM. With ``--to-the-end``
it trains on to the end instead, where the final upload waits for the fake, and prints
``returned`` once training returns.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hubfsm.core.config import CoreConfig
from hubfsm.core.platform import PLATFORM
from hubfsm.integrations.ultralytics_platform import PlatformCallbacks
from hubfsm.transport import Response
from tests.hubfsm.integrations.test_ultralytics_platform import Trainer
from tests.platform_fake import PLATFORM_KEY, FakePlatform
from transports.memory import HandlerTransport


def main() -> None:
    outbox = Path(sys.argv[1])
    fake = FakePlatform()
    hooks = PlatformCallbacks(
        api_key=PLATFORM_KEY,
        transport=HandlerTransport(fake),
        config=CoreConfig(limits=PLATFORM.limits, protocol="platform").scaled(0.001),
        outbox_dir=outbox,
        finish_timeout=600.0,
    )
    calls = hooks.callbacks()
    epoch_end = calls["on_fit_epoch_end"]

    def hold(trainer):
        if trainer.epoch == 1:
            hooks.session_of(trainer).flush(timeout=30.0)
            fake.fault = lambda request: Response(503, {"error": "down"})
        epoch_end(trainer)
        if trainer.epoch == 2 and "--to-the-end" not in sys.argv:
            print("held", flush=True)
            time.sleep(600)

    calls["on_fit_epoch_end"] = hold
    Trainer(outbox.parent / "run").train(calls, epochs=5)
    print("returned", flush=True)


if __name__ == "__main__":
    main()
