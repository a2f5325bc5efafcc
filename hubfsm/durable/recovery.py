"""Taking back an outbox after a restart: what it kept, and what the journal adds.

Runs before the worker starts (or on the worker), so only one thread touches the core.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from hubfsm.core import protocol
from hubfsm.core.changes import Change, MetricsQueued, Offered, Saved
from hubfsm.core.engine import Core
from hubfsm.core.events import CheckpointOffered, EpochEnded
from hubfsm.durable.journal import events
from hubfsm.durable.outbox import Outbox

log = structlog.get_logger("hubfsm")

JOURNAL = "journal"


def journal_path(outbox: Outbox) -> Path:
    """Where the trainer's journal of an outbox lies."""
    return outbox.directory / JOURNAL


def recover(outbox: Outbox, core: Core, *, now: float, quiet: bool = False) -> Saved:
    """Move the journal's unconsumed events into the outbox, then hand it all to the core.

    Returns:
        What was pending (to report it).
    """
    changes: list[Change] = []
    checkpoint = None
    last = outbox.journal_seq
    for seq, event in events(journal_path(outbox), after=outbox.journal_seq):
        last = seq
        if isinstance(event, EpochEnded):
            changes.append(MetricsQueued(event.epoch, protocol.encode_metrics(event.metrics)))
        elif isinstance(event, CheckpointOffered):
            part = None
            if os.path.exists(event.path):
                part = outbox.snapshot(event.path, name="last.pt", stamp=event.stamp)
            if part is not None:
                checkpoint = (event.epoch, part, event.is_best)
                changes.append(Offered("checkpoint", checkpoint))
    if last != outbox.journal_seq:
        outbox.apply(changes, journal_seq=last)
    # Links held for calls the dead process never got to are of no use now.
    for held in outbox.files.glob(".held-*"):
        held.unlink(missing_ok=True)
    saved = outbox.load()
    core.restore(saved, now=now)
    if not saved.empty and not quiet:
        log.info("outbox.recovered", model_id=outbox.model_id, **saved.counts())
    return saved
