"""Taking back an outbox after a restart: what it kept, and what the journal adds.

Runs before the worker starts (or on the worker), so only one thread touches the core.
"""

from __future__ import annotations

import os
from pathlib import Path

from hubfsm.core import protocol
from hubfsm.core.engine import Core
from hubfsm.core.plain import carried
from hubfsm.core.values import (
    KEPT_ASIDE,
    Change,
    CheckpointOffered,
    EpochEnded,
    FinishRequested,
    MetricsQueued,
    Offered,
    Rejected,
    Saved,
)
from hubfsm.durable.handover import still_offered
from hubfsm.durable.journal_scan import events
from hubfsm.durable.outbox import Outbox
from hubfsm.logs import get_logger
from hubfsm.transport import FilePart

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
                try:
                    part = outbox.snapshot(event.path, name="last.pt", stamp=event.stamp)
                except OSError as exc:  # no room for it: the rest is still recovered
                    log.warning("checkpoint.not_kept", epoch=event.epoch, error=str(exc))
            if part is not None:
                changes.append(Offered("checkpoint", (event.epoch, part, event.is_best)))
        elif isinstance(event, FinishRequested):
            # finish() was called, and the process died before the outbox had the final
            # weights: from the held link they are the bytes handed over.
            part = _final_snapshot(outbox, event)
            if part is not None:
                changes.append(Offered("final", (event.epoch, part, event.map50_95)))
                # As Core.finish does: the final weights supersede waiting epoch weights.
                changes.append(Offered("checkpoint", None))
            else:
                log.warning(
                    "journal.final_lost",
                    model_id=outbox.model_id,
                    path=event.path,
                    reason="the file is gone or was changed after finish() was called",
                )
    if last != outbox.journal_seq:
        outbox.apply(changes, journal_seq=last)
    # Links held for calls the dead process never got to are of no use now.
    for held in outbox.files.glob(".held-*"):
        held.unlink(missing_ok=True)
    return folded


def kept_counts(outbox: Outbox) -> dict[str, int]:
    """What is on disk for the hub, per channel: the outbox and its unconsumed journal.

    A closing session tells the user this, not its memory: what the journal holds past
    the outbox (the worker was stuck in a request, or the outbox could not be written)
    is folded in by the next session or ``hubfsm sync``, so it is kept too.
    """
    saved = outbox.load()
    counts = saved.counts()
    queued = {epoch for epoch, _ in saved.metrics}
    journaled: set[int] = set()
    for _, event in events(journal_path(outbox), after=outbox.journal_seq):
        if isinstance(event, EpochEnded) and event.epoch not in queued:
            journaled.add(event.epoch)
        elif not isinstance(event, (CheckpointOffered, FinishRequested)):
            continue
        elif not still_offered(event, outbox.files):
            continue  # as fold finds it: rewritten or cut short since, nothing to keep
        elif isinstance(event, CheckpointOffered):
            counts["checkpoint"] = 1
        elif isinstance(event, FinishRequested):
            # As fold does: the final weights supersede epoch weights still waiting.
            counts["final"] = 1
            counts["checkpoint"] = int(any(op.channel == "checkpoint" for op in saved.ops))
    counts["metrics"] += len(journaled)
    return counts


def _final_snapshot(outbox: Outbox, event: FinishRequested) -> FilePart | None:
    """The final weights of a journaled finish, from its held link or else the file."""
    # The link by its name in this outbox: the journal may hold a path relative to the
    # dead process's directory.
    held = None if event.held is None else str(outbox.files / os.path.basename(event.held))
    for source in (held, event.path):
        if source is not None and os.path.exists(source):
            part = outbox.snapshot(source, name="best.pt", stamp=event.stamp)
            if part is not None:
                return part
    return None


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
    kept = outbox.check_weights()
    if kept and not quiet:
        log.warning("outbox.weights_kept_aside", model_id=outbox.model_id, records=kept)
    saved = outbox.load()
    core.restore(saved, now=now)
    if not saved.empty and not quiet:
        log.info("outbox.recovered", model_id=outbox.model_id, **saved.counts())
    return saved
