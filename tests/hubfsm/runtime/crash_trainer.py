"""A small trainer for the crash tests: logs epochs and weights, then finishes.

Usage: crash_trainer.py API_ROOT MODEL_ID OUTBOX EPOCHS START WORKDIR (key in HUB_API_KEY)

With ``WAIT_FOR=PATH`` it waits (at most 30 s) for that file to exist after start, and
with ``PARK_AFTER=N`` it prints ``parked`` after logging epoch N and blocks until killed.
``HANDLE_SIGNALS=1`` opens the session with ``handle_signals=True``.
"""

import hashlib
import os
import sys
import time
from pathlib import Path

import structlog

import hubfsm
from hubfsm.core.config import ChannelPolicies, CoreConfig, Limits, RetryPolicy

# The worker's log lines go to stderr: on stdout they could split the lines the test reads.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

QUICK = RetryPolicy(base=0.02, cap=0.1, max_attempts=4, deadline=3.0)
CONFIG = CoreConfig(
    limits=Limits(metrics=0.02, checkpoint=0.1, heartbeat=1.0, park=0.1, checkpoint_grace=0.02),
    policies=ChannelPolicies(QUICK, QUICK, QUICK, QUICK, QUICK),
)


def say(line):
    # One write per line: print() writes the text and the newline separately, and the
    # session's worker thread may log to stdout in between, splitting "logged 1".
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def metrics(epoch):
    return {"train/loss": round(1.0 / (epoch + 1), 6), "metrics/x": epoch * 0.01}


def best_bytes():
    # big enough that the final upload takes a while, deterministic so the test can hash it
    block = hashlib.sha256(b"best").digest() * 1024
    return block * 256  # 8 MiB


def main():
    api, model_id, outbox, epochs, start, work = sys.argv[1:7]
    epochs, start, work = int(epochs), int(start), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    session = hubfsm.Session(model_id, api_root=api, web_root=api, outbox_dir=outbox,
                             config=CONFIG, exit_timeout=2.0,
                             handle_signals=os.environ.get("HANDLE_SIGNALS") == "1")
    session.start()
    print("started", flush=True)
    wait_for = os.environ.get("WAIT_FOR")
    if wait_for:
        deadline = time.monotonic() + 30.0
        while not os.path.exists(wait_for) and time.monotonic() < deadline:
            time.sleep(0.01)
    park_after = int(os.environ.get("PARK_AFTER", "-1"))
    last = work / "last.pt"
    for epoch in range(start, epochs):
        say(f"logging {epoch}")
        session.log_metrics(metrics(epoch), epoch=epoch)
        say(f"logged {epoch}")
        last.write_bytes(b"weights of epoch %d " % epoch * 4096)
        session.save_checkpoint(last, epoch=epoch, is_best=epoch % 2 == 0)
        if epoch == park_after:
            print("parked", flush=True)
            sys.stdin.read()  # until the test kills the process
        time.sleep(0.03)
    best = work / "best.pt"
    best.write_bytes(best_bytes())
    say("finishing")
    session.finish(best, epoch=epochs - 1, map50_95=0.5)
    say("done")
    session.close()


if __name__ == "__main__":
    main()
