"""A small Platform trainer for the kill test: opens a run, logs epochs, then parks.

Usage: platform_trainer.py API_ROOT OUTBOX WORKDIR (key in ULTRALYTICS_API_KEY)

It logs epochs 0-2 and waits until they landed, prints ``model MODEL_ID``, waits (at
most 30 s) for ``WORKDIR/go``, logs epochs 3-5 and a checkpoint, prints ``parked`` and
blocks until killed.
"""

import sys
import time
from pathlib import Path

import structlog

import hubfsm
from hubfsm.core.config import ChannelPolicies, CoreConfig, RetryPolicy
from hubfsm.core.platform import PLATFORM

# The worker's log lines go to stderr: on stdout they could split the lines the test reads.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

QUICK = RetryPolicy(base=0.02, cap=0.1, max_attempts=4, deadline=3.0)
CONFIG = CoreConfig(
    limits=PLATFORM.limits.scaled(0.001),
    policies=ChannelPolicies(QUICK, QUICK, QUICK, QUICK, QUICK),
    protocol="platform",
)


def main():
    root, outbox, work = sys.argv[1:4]
    work = Path(work)
    session = hubfsm.Session("owner/kill-test", api_root=root, outbox_dir=outbox,
                             config=CONFIG, train_args={"name": "run1"})  # fmt: skip
    session.start()
    for epoch in range(3):
        session.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    assert session.flush(timeout=20.0)
    sys.stdout.write(f"model {session.model_id}\n")
    sys.stdout.flush()
    deadline = time.monotonic() + 30.0
    while not (work / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for epoch in range(3, 6):
        session.log_metrics({"loss": 1.0 / (epoch + 1)}, epoch=epoch)
    last = work / "last.pt"
    last.write_bytes(b"epoch five weights")
    session.save_checkpoint(last, epoch=5)
    sys.stdout.write("parked\n")
    sys.stdout.flush()
    time.sleep(600)


if __name__ == "__main__":
    main()
