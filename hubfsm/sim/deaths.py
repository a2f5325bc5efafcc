"""A simulated process's death, and ``hubfsm sync`` over what it left.

A dying process takes nothing with it but its memory: the kernel releases its files
and locks, the journal and the outbox stay on disk (see :mod:`hubfsm.sim.machine` for
where it dies). The trainer starts it again from them, or gives up and leaves the rest
to ``hubfsm sync``, run here as a user would, in a new process.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from hubfsm.core.values import EpochEnded
from hubfsm.durable.survey import OutboxInfo
from hubfsm.errors import HubfsmError
from hubfsm.runtime.session import Session
from hubfsm.runtime.sync import sync
from hubfsm.sim.end_checks import check_disk
from hubfsm.sim.machine import Machine, poison_value

#: Virtual seconds a dead process takes to come back.
RESTART_SECONDS = (5.0, 120.0)

if TYPE_CHECKING:
    # The world runs these when its process dies: for the type only, so the import goes
    # one way.
    from hubfsm.sim.world import World


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
    if journal is None:
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
