"""Taking back an outbox after a restart: what it kept, and what the journal adds.

Runs before the worker starts (or on the worker), so only one thread touches the core.
"""

from __future__ import annotations

import os
from pathlib import Path

from hubfsm.core import protocol
from hubfsm.core.changes import KEPT_ASIDE, Change, MetricsQueued, Offered, Rejected, Saved
from hubfsm.core.engine import Core
from hubfsm.core.events import CheckpointOffered, EpochEnded
from hubfsm.core.plain import carried
from hubfsm.durable.journal import events
from hubfsm.durable.outbox import Outbox
from hubfsm.logs import get_logger

log = get_logger("hubfsm")

JOURNAL = "journal"
#: How much of a record kept aside is kept as text.
_SHOWN = 2000

def journal_path(outbox: Outbox) -> Path:
    """Where the trainer's journal of an outbox lies."""
    return outbox.directory / JOURNAL


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
    for seq, event in events(journal_path(outbox), after=outbox.journal_seq):
        last = seq
        folded += 1
        if isinstance(event, EpochEnded):
            try:
                encoded = protocol.encode_metrics(carried(event.metrics))
            except (TypeError, ValueError) as exc:
                # One record an older version journaled that the wire cannot carry is
                # kept aside with the reason; it must not stop the records after it.
                changes.append(kept_aside(outbox.model_id, seq, event, str(exc)))
                continue
            changes.append(MetricsQueued(event.epoch, encoded))
        elif isinstance(event, CheckpointOffered):
            part = None
            if os.path.exists(event.path):
                part = outbox.snapshot(event.path, name="last.pt", stamp=event.stamp)
            if part is not None:
                changes.append(Offered("checkpoint", (event.epoch, part, event.is_best)))
    if last != outbox.journal_seq:
        outbox.apply(changes, journal_seq=last)
    # Links held for calls the dead process never got to are of no use now.
    for held in outbox.files.glob(".held-*"):
        held.unlink(missing_ok=True)
    return folded


def kept_aside(model_id: str, seq: int, event: EpochEnded, reason: str) -> Rejected:
    """An epoch's metrics that cannot be sent, as a record kept aside with the reason.

    What was logged is kept as text (the hub never sees it), so that ``hubfsm status``
    can show it and ``hubfsm discard --rejected`` can remove it.
    """
    try:
        shown = repr(event.metrics)
    except ValueError:  # an integer too long for repr
        shown = repr({str(k): type(v).__name__ for k, v in event.metrics.items()})
    request = protocol.upload_metrics(
        model_id, {event.epoch: shown[:_SHOWN]}, key=f"kept-aside-{seq}"
    )
    log.warning("journal.record_kept_aside", model_id=model_id, epoch=event.epoch, reason=reason)
    return Rejected("metrics", request, (event.epoch,), KEPT_ASIDE, reason)


def recover(outbox: Outbox, core: Core, *, now: float, quiet: bool = False) -> Saved:
    """Move the journal's unconsumed events into the outbox, then hand it all to the core.

    Returns:
        What was pending (to report it).
    """
    fold(outbox)
    saved = outbox.load()
    core.restore(saved, now=now)
    if not saved.empty and not quiet:
        log.info("outbox.recovered", model_id=outbox.model_id, **saved.counts())
    return saved
