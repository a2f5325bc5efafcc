"""Bugs a test plants in the client's layers, to show the simulator finds them.

Beside the switches of :class:`Bugs`, this module holds the planted bugs of the machine
faults: each puts back, in the real code path the simulator runs, one way of losing
data on a failing machine (see :data:`MACHINE_BUGS`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from hubfsm.core.engine import Core
from hubfsm.core.platform import PLATFORM
from hubfsm.core.schedule import Schedule
from hubfsm.core.values import (
    Change,
    CheckpointOffered,
    EpochEnded,
    FinishRequested,
    MetricsQueued,
    Offered,
    Saved,
)
from hubfsm.durable.handover import stamp_of
from hubfsm.durable.journal_scan import events
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.recovery import journal_path
from hubfsm.errors import IllegalEventError
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.factory import CoreFactory
from hubfsm.runtime.session import FINISH_GRACE, Session


@attrs.frozen
class Bugs:
    """Bugs planted in the client's layers, so tests can show the simulator finds them.

    Attributes:
        core_factory: Makes the core, called like :class:`Core`.
        driver_factory: Makes the driver, called like :class:`Driver`.
        sync_recover: The recovery ``hubfsm sync``'s sessions run, instead of the real one.
        nonce_from_seed: Sessions take their idempotency keys' nonce from the user's seed
            (the same in every process) instead of from fresh randomness.
        recover: The recovery every session runs (the trainer's and sync's), instead of
            the real one (``sync_recover`` wins for sync's sessions).
        session_class: The session the trainer and sync get (a subclass plants a bug).
        keep_temp: A snapshot that fails leaves its partial temporary file in the
            simulated disk's outbox, holding the space it took.
    """

    core_factory: CoreFactory = Core
    driver_factory: Callable[..., Driver] = Driver
    sync_recover: Callable[..., Any] | None = None
    nonce_from_seed: bool = False
    recover: Callable[..., Any] | None = None
    session_class: type[Session] = Session
    keep_temp: bool = False


#: No bug planted: the client as it ships.
NO_BUGS = Bugs()


# -- the planted bugs of the machine faults ----------------------------------------------


class DropsFailedWrites(Driver):
    """Planted bug: a failed outbox write is logged and dropped.

    The core's changes are taken and the journal's progress cleared before the write;
    when it fails they are gone, and the next write marks the journal consumed past them.
    """

    def persist(self) -> None:
        """Write the core's changes to the outbox; on failure, forget them."""
        durability = self.durability
        if durability is None:
            return
        core = self.core
        if durability.outbox is None:
            if core.model_id is None or durability.error is not None:
                return
            try:
                durability.attach(core.model_id, core, now=self.clock())
            except Exception as exc:
                durability.error = exc
                return
        changes = core.take_changes()
        journal_seq = self._journal_seq
        if not changes and journal_seq is None:
            return
        self._journal_seq = None
        # The bug: what the failed write held is dropped.
        with contextlib.suppress(Exception):
            durability.apply(changes, journal_seq=journal_seq)


class FinishesInMemory(Session):
    """Planted bug: ``finish()`` hands the final weights to the worker in memory only.

    Nothing is journaled, so a process killed before the worker has written them to
    the outbox loses them.
    """

    def finish(
        self,
        path: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        map50_95: float = 0.0,
        timeout: float = 3600.0,
    ) -> None:
        """Hand the final weights over in memory, then wait for the upload."""
        if not self._accepting:
            raise IllegalEventError(self._core.state, "finish")
        last = max(self._next_epoch - 1 if epoch is None else epoch, 0)
        file = os.fspath(path)
        event = FinishRequested(file, last, map50_95, stamp_of(file), timeout)
        # The inbox journals a finish on its own: the bug hands it past the journal.
        inbox = self._inbox
        journal, inbox.journal = inbox.journal, None
        try:
            self._shell.call(event, timeout=max(60.0, timeout))
        finally:
            inbox.journal = journal
        self._accepting = False
        # As long a wait as the session's own finish gives the worker, grace included.
        self._settle(timeout, self._shell.clock() + timeout + 5.0 - FINISH_GRACE)


def recover_stopping_on_poison(
    outbox: Outbox, core: Core, *, now: float, quiet: bool = False
) -> Saved:
    """Planted bug: recovery encodes every journal record, and one it cannot stops it all."""
    changes: list[Change] = []
    last = outbox.journal_seq
    for seq, event in events(journal_path(outbox), after=outbox.journal_seq):
        last = seq
        if isinstance(event, EpochEnded):
            changes.append(MetricsQueued(event.epoch, _strict_json(event.metrics)))
        elif isinstance(event, CheckpointOffered) and os.path.exists(event.path):
            part = outbox.snapshot(event.path, name="last.pt", stamp=event.stamp)
            if part is not None:
                changes.append(Offered("checkpoint", (event.epoch, part, event.is_best)))
    if last != outbox.journal_seq:
        outbox.apply(changes, journal_seq=last)
    saved = outbox.load()
    core.restore(saved, now=now)
    return saved


def _strict_json(metrics: Mapping[str, Any]) -> str:
    """The metrics as strict JSON; raises for a value JSON cannot carry, as old recovery did."""
    return json.dumps(dict(metrics), sort_keys=True, allow_nan=False)


#: The planted bug of each machine-fault class, as :class:`Bugs`, by class.
MACHINE_BUGS: dict[str, Bugs] = {
    "temp file kept": Bugs(keep_temp=True),
    "failed write dropped": Bugs(driver_factory=DropsFailedWrites),
    "finish held in memory": Bugs(session_class=FinishesInMemory),
    "poison stops recovery": Bugs(recover=recover_stopping_on_poison),
}


class _BlindFinalGate(Schedule):
    """The real scheduler, with the final upload's gate blind to the metrics channel."""

    def make_due(
        self,
        now: float,
        *,
        final: bool,
        heartbeats: bool,
        model_id: str,
        run_id: int | None,
        agent_id: str | None,
    ) -> None:
        ops = self.ops
        due = functools.partial(
            super().make_due, now, final=final, heartbeats=heartbeats, model_id=model_id,
            run_id=run_id, agent_id=agent_id,
        )  # fmt: skip
        if not (final and self.dialect is PLATFORM and ops["final"] is None):
            due()
            return
        # Let the metrics be scheduled first, then hide them from the final's gate only.
        due()
        held = ops["metrics"], self.unsent, self.solo
        ops["metrics"], self.unsent, self.solo = None, {}, {}
        try:
            due()
        finally:
            ops["metrics"] = held[0]
            self.unsent = {**held[1], **self.unsent}
            self.solo = {**held[2], **self.solo}


class CompleteBeforeLastEpoch(Core):
    """The official Platform client's order: ``training_complete`` does not wait for epochs.

    Its ``on_train_end`` waits only for a checkpoint in flight, while the last
    ``epoch_end`` may still be on its thread pool. Here the real scheduler runs with its
    final-upload gate blind to the metrics channel: the final upload (whose last step is
    ``training_complete``) starts beside epochs not yet acknowledged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schedule.__class__ = _BlindFinalGate


#: The Platform-only bug: ``training_complete`` may go before the last epoch is acknowledged.
COMPLETE_BEFORE_LAST_EPOCH = Bugs(core_factory=CompleteBeforeLastEpoch)
