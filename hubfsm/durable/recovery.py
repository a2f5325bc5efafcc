"""Taking back an outbox after a restart: what it kept, and what the journal adds.

Runs before the worker starts (or on the worker), so only one thread touches the core.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hubfsm.core import protocol
from hubfsm.core.changes import Change, MetricsQueued, Offered, Saved
from hubfsm.core.engine import Core
from hubfsm.durable.journal import replay
from hubfsm.durable.outbox import FileStamp, Outbox
from hubfsm.logs import get_logger

log = get_logger("hubfsm")

JOURNAL = "journal"

# Journal entries: ``("m", epoch, metrics)`` for ``log_metrics`` (built inline there,
# where every call counts), and :func:`checkpoint_entry` for ``save_checkpoint``.


def journal_path(outbox: Outbox) -> Path:
    """Where the trainer's journal of an outbox lies."""
    return outbox.directory / JOURNAL


def checkpoint_entry(path: str, epoch: int, is_best: bool, stamp: FileStamp) -> tuple[Any, ...]:
    """The journal entry of ``save_checkpoint``."""
    return ("c", path, epoch, is_best, stamp.size, stamp.mtime_ns, stamp.inode)


def fold(outbox: Outbox) -> int:
    """Move the journal's unconsumed events into the outbox (the caller holds its lock).

    What a killed process had only journaled (its worker was stuck in a request) is
    then pending in the outbox like everything else, for a new session or ``hubfsm
    sync``/``hubfsm status``, none of which needs the network for it.

    Returns:
        How many journal records were folded in.
    """
    changes: list[Change] = []
    folded = 0
    last = outbox.journal_seq
    for seq, entry in replay(journal_path(outbox), after=outbox.journal_seq):
        last = seq
        folded += 1
        if entry[0] == "m":
            _, epoch, metrics = entry
            changes.append(MetricsQueued(epoch, protocol.encode_metrics(metrics)))
        elif entry[0] == "c":
            _, path, epoch, is_best, size, mtime_ns, inode = entry
            stamp = FileStamp(size, mtime_ns, inode)
            part = None
            if os.path.exists(path):
                part = outbox.snapshot(path, name="last.pt", stamp=stamp)
            if part is not None:
                changes.append(Offered("checkpoint", (epoch, part, is_best)))
    if last != outbox.journal_seq:
        outbox.apply(changes, journal_seq=last)
    # Links held for calls the dead process never got to are of no use now.
    for held in outbox.files.glob(".held-*"):
        held.unlink(missing_ok=True)
    return folded


def recover(outbox: Outbox, core: Core, *, now: float) -> Saved:
    """Move the journal's unconsumed events into the outbox, then hand it all to the core.

    Returns:
        What was pending (to report it).
    """
    fold(outbox)
    saved = outbox.load()
    core.restore(saved, now=now)
    if not saved.empty:
        log.info("outbox.recovered", model_id=core.model_id, **saved.counts())
    return saved
