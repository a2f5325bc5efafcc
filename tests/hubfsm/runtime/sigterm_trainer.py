"""A trainer that is sent SIGTERM in the middle of rewriting its checkpoint in place.

Usage: sigterm_trainer.py (the hub in ULTRALYTICS_HUB_API, the key in HUB_API_KEY; the
test's proxy makes the file HELD once it holds a request)

It logs epoch 0 with its checkpoint, prints ``epoch 0`` and waits for a line on
standard input (the test makes the hub stop answering); then it logs epoch 1 with its
checkpoint (the worker, waiting on the hub, takes no offer in) and, as ``torch.save`` of
epoch 2 would, opens ``last.pt`` for writing, writes half of it, and a real SIGTERM (a
scheduler's time limit) arrives.
"""

import os
import signal
import sys
import time
from pathlib import Path

import hubfsm
from hubfsm.core.config import CoreConfig

CONFIG = CoreConfig().scaled(0.01)


def main():
    weights = Path("last.pt")
    with hubfsm.Session("yolov8n.yaml", config=CONFIG, exit_timeout=1.0,
                        handle_signals=True) as session:
        for epoch in range(2):
            weights.write_bytes(b"weights of epoch %d\n" % epoch * 1000)
            session.log_metrics({"train/loss": 1.0 / (epoch + 1)}, epoch=epoch)
            if epoch == 1:
                # The worker is inside a request the hub does not answer (at most 30 s).
                deadline = time.monotonic() + 30.0
                while not os.path.exists(os.environ["HELD"]) and time.monotonic() < deadline:
                    time.sleep(0.01)
            session.save_checkpoint(weights, epoch=epoch)
            print(f"epoch {epoch} {session.model_id}", flush=True)
            if epoch == 0:
                sys.stdin.readline()
        with weights.open("wb") as f:  # the same inode as the link save_checkpoint made
            f.write(b"half of epoch 2")
            f.flush()
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
