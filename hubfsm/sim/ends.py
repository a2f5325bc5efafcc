"""How a simulated process ends, and what it leaves: its death, ``hubfsm sync``, the checks.

A dying process takes nothing with it but its memory (:func:`die`): the kernel releases
its files and locks, the journal and the outbox stay on disk (see
:mod:`hubfsm.sim.machine` for where it dies). The trainer starts it again from them, or
gives up and leaves the rest to ``hubfsm sync``, run here as a user would, in a new
process (:func:`sync_outboxes`).

What it left is in three places: the hub (what it applied and holds), the outbox and the
journal (read from the disk, as a new process would find them). A process that dies
must leave every accepted epoch and the final weights in one of them
(:func:`check_disk`); at the end the hub is held to what the trainer did and the session
to how it must end (:func:`check_hub`), and the final weights ``finish`` took to being
on the hub or kept (:func:`check_final`). The checks made while the run goes are in
:mod:`hubfsm.sim.invariants`.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from hubfsm.core.values import EpochEnded, FinishPending, FinishRequested, Saved
from hubfsm.durable.journal_scan import events
from hubfsm.durable.layout import DATABASE
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.recovery import JOURNAL
from hubfsm.durable.survey import OutboxInfo
from hubfsm.errors import AuthError, HubfsmError
from hubfsm.runtime.session import Session
from hubfsm.runtime.sync import sync
from hubfsm.sim.invariants import FAILED_WRITE
from hubfsm.sim.machine import Machine, poison_value
from hubfsm.sim.platform_checks import platform_applied
from hubfsm.sim.scenario import Expect

#: Virtual seconds a dead process takes to come back.
RESTART_SECONDS = (5.0, 120.0)

if TYPE_CHECKING:
    # The world runs these at its deaths and its end: for the type only, so the import
    # goes one way.
    from hubfsm.sim.world import World


def kept(world: World) -> tuple[set[int], bool]:
    """What the run's outbox and journal keep: the epochs, and whether a final.

    Read from the disk, as a new process would find it: the outbox's records and
    the journal's records newer than the outbox's.
    """
    held = outbox_now(world)
    if held is None:
        return set(), False
    saved, journal_seq = held
    directory = world.outboxes / str(world.model_id)
    epochs = {epoch for epoch, _ in saved.metrics}
    final = saved.final is not None
    for op in saved.ops:
        if op.channel == "metrics":
            epochs.update(op.payload)
        final = final or op.channel == "final"
    for record in saved.rejected:
        if record.channel == "metrics":
            epochs.update(record.payload)
    for _, event in events(directory / JOURNAL, after=journal_seq):
        if isinstance(event, EpochEnded):
            epochs.add(event.epoch)
        final = final or isinstance(event, FinishRequested | FinishPending)
    return epochs, final


def outbox_now(world: World) -> tuple[Saved, int] | None:
    """What the run's outbox holds now, and the last journal record it took in.

    None when there is no outbox (nothing was left). The simulated disk is read
    until ``hubfsm sync`` wrote it out; from then on, and without one, the files.
    """
    if world.model_id is None:
        return None
    directory = world.outboxes / world.model_id
    if world.disk is not None and not world.synced:
        db = world.disk.databases.get(directory)
        return None if db is None else (db.load(), db.journal_seq)
    if not (directory / DATABASE).exists():
        return None
    outbox = Outbox(directory, world.model_id)
    try:
        return outbox.load(), outbox.journal_seq
    finally:
        outbox.close()


def check_disk(world: World, when: str) -> None:
    """What a process leaves on disk keeps every accepted event, and no temporary file."""
    left = [] if world.disk is None else world.disk.temporary_files()
    if left:
        name = os.path.basename(left[0])
        world.checker.violate(
            FAILED_WRITE, f"a failed snapshot left its temporary file {name} behind"
        )
    epochs, final = kept(world)
    lost = sorted(set(world.logged) - on_hub(world) - epochs)
    # Calls taken without a journal were said to be at risk when it was given up.
    at_risk = [epoch for epoch in lost if epoch in world.unjournaled]
    if at_risk:
        world.reported_lost.update(at_risk)
        world.checker.note(f"lost as the session said they might be: epochs {at_risk[:10]}")
    lost = [epoch for epoch in lost if epoch not in world.unjournaled]
    if lost:
        world.checker.violate(
            FAILED_WRITE,
            f"the process {when}: epochs neither on the hub, in the outbox nor in the "
            f"journal: {lost[:10]}",
        )
    if world.final_unjournaled and not final and not final_on_hub(world):
        world.checker.note("the final weights are lost, as the session said they might be")
    elif world.final_accepted and not final and not final_on_hub(world):
        world.checker.violate(
            FAILED_WRITE,
            f"the process {when}: the final weights finish() took are neither on the hub, "
            "in the outbox nor in the journal",
        )


def final_on_hub(world: World) -> bool:
    """Whether the final weights the trainer handed to ``finish`` are on the hub."""
    _, uploads = applied(world)
    return any(kind == "final" and sha == world.expected_sha for kind, _, sha in uploads)


def check_final(world: World) -> None:
    """With machine faults: the final weights ``finish`` took are on the hub or kept."""
    if world.machine is None or not world.final_accepted:
        return
    if final_on_hub(world) or world.core.pending()["final"]:
        return
    if world.final_unjournaled:
        world.checker.note("the final weights are lost, as the session said they might be")
        return
    world.checker.violate(
        1, "the final weights finish() took are neither on the hub nor kept in the outbox"
    )


def applied(world: World) -> tuple[dict[int, int], list[tuple[str, int, str]]]:
    """What the hub applied; an epoch a poison record and the trainer both sent, once.

    For Platform: what the hub holds (see :func:`platform_applied`).
    """
    model_id = world.core.model_id or ""
    if world.protocol == "platform":
        return platform_applied(world.hub_now(), model_id)
    metrics: Counter[int] = Counter()
    uploads = []
    for audit in world.audits():
        metrics.update({e: n for (m, e), n in audit.metrics_applied.items() if m == model_id})
        uploads += [(u.type, u.epoch, u.sha256) for u in audit.uploads if u.model_id == model_id]
    for epoch in world.poisoned & metrics.keys():
        metrics[epoch] = 1
    return dict(metrics), uploads


def on_hub(world: World) -> set[int]:
    """The epochs whose metrics the hub holds."""
    model_id = world.core.model_id
    if model_id is None:
        return set()
    # From the store itself: what the hub would list, without decoding every epoch.
    return {epoch for epoch, _ in world.hub_now().store.get_metrics(model_id)}


def check_hub(
    world: World,
    *,
    expect: Expect | None = None,
    queued: Iterable[int] = (),
    held: Iterable[int] | None = None,
    reported: Iterable[int] = (),
    texts: Iterable[str] = (),
) -> None:
    """Invariants 1, 2, 3 and 7, and how the session ended: the hub against the trainer.

    Args:
        world: The run, played to its end (its core, its trainer's calls, its hub).
        expect: ``done`` when the session must have delivered everything;
            ``auth_refused`` when the key must have stopped it, keeping its data;
            None to check only the invariants themselves.
        queued: Epochs accepted from the trainer that the driver has not taken in yet.
        held: The epochs the outbox holds (pending or rejected); by default what the
            core still holds. Every epoch accepted is on the hub or held: never only
            in a log line.
        reported: Epochs lost as the session had said they might be, with the reason
            (a journal given up on a full disk says what a kill then loses).
        texts: Other texts to search for the API key (error messages, reprs).
    """
    metrics, uploads = applied(world)
    finals = [sha for kind, _, sha in uploads if kind == "final"]
    # Requests the hub refused because their idempotency key had answered another
    # request: a key stands for one request, so there must be none.
    reused = sum(sum(audit.reused.values()) for audit in world.audits())
    checker, core = world.checker, world.core
    logged_epochs = set(world.logged)
    hub_epochs = on_hub(world)
    state = core.state
    kept = core.unacknowledged_epochs() | core.rejected_epochs() if held is None else set(held)
    lost_as_said = set(reported)
    missing = logged_epochs - hub_epochs - kept - set(queued) - lost_as_said
    if missing:
        checker.violate(1, f"epochs neither on the hub nor held: {sorted(missing)[:10]}")
    # Records the hub refused are kept aside, not undelivered by the session's fault.
    undelivered = sorted(logged_epochs - hub_epochs - core.rejected_epochs() - lost_as_said)
    if state == "done" and undelivered:
        checker.violate(1, f"done, yet epochs not on the hub: {undelivered[:10]}")
    if expect == "done" and state != "done":
        why, left = core.error or core.last_failure, len(undelivered)
        checker.violate(
            1, f"the session ended {state}, not done ({why}); {left} epochs not on the hub"
        )
    elif expect == "auth_refused" and (
        # A key revoked before the session opened fails it at once, as a bad key does.
        state != ("failed" if checker.failed_opening else "refused")
        or not isinstance(core.error, AuthError)
    ):
        ended = f"{state} with {type(core.error).__name__ if core.error else 'no error'}"
        checker.violate(6, f"a revoked key must stop the session with AuthError; it ended {ended}")
    twice = sorted(e for e, n in metrics.items() if n > 1)
    if twice:
        checker.violate(2, f"metrics applied more than once for epochs {twice[:10]}")
    repeated = [u for u, n in Counter(uploads).items() if n > 1]
    if repeated:
        kind, epoch, _ = repeated[0]
        checker.violate(2, f"{kind} weights of epoch {epoch} applied more than once")
    if reused:
        checker.violate(2, f"{reused} requests reused an idempotency key with another body")
    final_sha256 = finals[-1] if finals else None
    if state == "done" and final_sha256 != world.expected_sha:
        checker.violate(3, f"final weights {final_sha256} != handed over {world.expected_sha}")
    # last.pt is written again at every checkpoint: an upload must hold the bytes of the
    # epoch it names, never a later epoch's that replaced them on disk.
    mislabelled = sorted(
        e for kind, e, sha in uploads if kind == "epoch" and sha != world.checkpoints.get(e)
    )
    if mislabelled:
        checker.violate(
            3, f"checkpoints of epochs {mislabelled[:10]} hold other bytes than offered then"
        )
    corpus = "\n".join([repr(core), str(core.error or ""), *texts, *checker.free_text()])
    if world.key in corpus:
        checker.violate(7, "the API key appears in a trace entry, repr or message")


# -- a process's death, and `hubfsm sync` after it -------------------------------


def die(world: World) -> None:
    """The process is gone: what it held is released as the kernel would, nothing more."""
    parts = world.parts
    machine = world.machine
    if machine is not None and machine.plan.poison_journal and not world.poisoned:
        _leave_poison(world, machine)
    if parts is not None and parts.durability is not None:
        parts.durability.close(remove=False)
    if machine is not None:
        check_disk(world, "dies")
    # Its memory is gone: what the journal holds is all that is left of its inbox.
    world.runner.inbox.clear()
    world.session = None
    world.checker.restarted()
    world.clock.sleep(world._restart_rng.uniform(*world.restart_seconds))


def _leave_poison(world: World, machine: Machine) -> None:
    """The dying process leaves a poison record in its journal (an older version's)."""
    parts = world.parts
    journal = None if parts is None or parts.durability is None else parts.durability.journal
    if journal is None or journal.closed:
        # Closed already: the session's opening failed and it released its files before
        # the process died, so this process has no journal left to write to.
        return
    epoch = len(world.logged)
    kind = machine.plan.poison_kind
    journal.append(EpochEnded(epoch, {"train/loss": 1.0, **poison_value(kind)}))
    world.poisoned.add(epoch)
    machine.injected += 1
    world.checker.note(f"the journal keeps a record of epoch {epoch} JSON cannot carry ({kind})")


def sync_outboxes(world: World) -> None:
    """Run ``hubfsm sync`` over the run's outboxes, in a new simulated process."""
    out = io.StringIO()
    world.synced = True  # from now on the outboxes are files
    if world.machine is not None:
        world.machine.armed = False  # the space is freed by the time the user runs sync
    if world.disk is not None:
        world.disk.dump()

    def open_session(info: OutboxInfo) -> Session:
        session = world.compose(info.model_id, timeout=world.profile.patience, sync=True)
        if session is None:
            error = world.core.error
            raise error if error is not None else HubfsmError("the hub did not answer")
        return session

    sync(world.outboxes, out=out, timeout=world.profile.patience, open_session=open_session)
