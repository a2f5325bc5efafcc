"""Writes batches to an outbox forever (until killed), for the power-cut test.

Each transaction queues three new epochs and moves the previous three into an
operation, so after any committed transaction every epoch from 0 up is either queued
or in exactly one operation. It prints ``ready`` once two transactions of its own are
committed (so every run moves the outbox on), then goes on writing.
"""

import sys

from hubfsm.core import protocol
from hubfsm.core.values import MetricsQueued, OpClosed, OpOpened
from hubfsm.durable.outbox import Outbox

MODEL = "P" * 20


def main():
    outbox = Outbox.open(MODEL, sys.argv[1])
    saved = outbox.load()
    epochs = [e for e, _ in saved.metrics] + [e for op in saved.ops for e in op.payload]
    batch = (max(epochs) + 1) // 3 if epochs else 0
    first = batch
    while True:
        new = [MetricsQueued(e, '{"loss": %d}' % e) for e in range(batch * 3, batch * 3 + 3)]
        changes = list(new)
        if batch:
            prev = tuple(range(batch * 3 - 3, batch * 3))
            request = protocol.upload_metrics(MODEL, {e: "{}" for e in prev}, key=f"k{batch}")
            changes.append(OpOpened("metrics", request, prev))
        if batch % 5 == 4:
            changes.append(OpClosed(f"k{batch - 2}"))  # some operations get acknowledged
        outbox.apply(changes, journal_seq=batch)
        batch += 1
        if batch == first + 2:
            print("ready", flush=True)


if __name__ == "__main__":
    main()
