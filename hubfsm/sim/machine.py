"""Machine faults: the disk and the process fail, and the trainer logs what JSON cannot carry.

The simulator's other faults come from the hub and the network. These come from the
machine the trainer runs on, and hit the durable layers the simulated sessions run:

- an outbox write (one transaction) fails with ``ENOSPC`` or ``EIO``, and nothing of it
  is written, as SQLite rolls it back;
- a weights snapshot fails part way through its copy, leaving a partial temporary file
  that holds the space it took until someone removes it;
- the disk is full for a while (every write fails), then space is freed;
- the process dies right after a drawn request left (it may land; its answer is lost
  with it), and starts again from what it left on disk (see :mod:`hubfsm.sim.ends`);
- the process is killed (``SIGKILL``) at a drawn outbox write or request inside
  ``finish()``, or terminated (``SIGTERM``: the exit path flushes within its deadline)
  while ``finish()`` waits, and the trainer does not come back: ``hubfsm sync`` sends
  what is left;
- the trainer logs values JSON cannot carry (a key that is not a string, an integer too
  big to print, NaN, infinity), and a process dies with such a record in its journal.

A :class:`MachineFaults` is part of a profile; :meth:`MachineFaults.draw` gives one
seed's :class:`MachinePlan`; a :class:`Machine` applies it as the run goes.
"""

from __future__ import annotations

import errno
import math
import os
import random
from collections.abc import Callable
from typing import Any, Literal

import attrs

from hubfsm.transport import Handler, Request, Response, TransportError

__all__ = [
    "POISONS",
    "Crash",
    "Dying",
    "Machine",
    "MachineFaults",
    "MachinePlan",
    "Terminated",
    "poison_value",
]

#: The values the trainer may log that JSON cannot carry, by name.
POISONS = ("int-key", "huge-int", "nan", "inf")

FinishKill = Literal["write", "request", "sigterm"]


class Crash(BaseException):
    """The simulated process dies (a BaseException: no layer of the client may survive it).

    What survives is what a real process leaves behind: the outbox and the journal, and
    the trainer's own progress, as a real trainer resuming from its checkpoint would have
    it.
    """


class Dying:
    """Wraps a handler: the process dies right after its n-th request left (it may land).

    Args:
        handler: Answers each request first.
        deaths: The fatal request numbers (counted from 1); the trainer may empty the set
            to die no more.
    """

    def __init__(self, handler: Handler, deaths: set[int]) -> None:
        self.handler = handler
        self.deaths = deaths
        self.sent = 0

    def __call__(self, request: Request) -> Response:
        """Hand ``request`` on, then die if this was a fatal request number."""
        self.sent += 1
        try:
            response = self.handler(request)
        except TransportError:
            if self.sent in self.deaths:
                raise Crash(f"the process dies during request {self.sent}") from None
            raise
        if self.sent in self.deaths:
            raise Crash(f"the process dies during request {self.sent}")
        return response


def poison_value(kind: str) -> dict[Any, Any]:
    """One metric JSON cannot carry, to add to an epoch's metrics."""
    if kind == "int-key":
        return {7: 1.0}
    if kind == "huge-int":
        return {"metrics/big": 10**5000}
    if kind == "nan":
        return {"metrics/nan": math.nan}
    return {"metrics/inf": math.inf}


@attrs.frozen
class MachineFaults:
    """How the machine fails in a profile.

    Attributes:
        write_error: The chance that one outbox write fails (``ENOSPC`` or ``EIO``).
        snapshot_error: The chance that one weights snapshot fails part way.
        full: ``(lo, hi)``: how many times the disk is full (every write fails).
        full_seconds: ``(lo, hi)``: how long it stays full before space is freed.
        finish_kill: The chance that the process is killed or terminated inside
            ``finish()``; the trainer does not come back.
        sigterm: Of those, the share that are a ``SIGTERM`` (the exit path runs).
        poison: The chance that the trainer logs one epoch with a value JSON cannot carry.
        poison_journal: The chance that a process dies with such a record in its journal
            (left by a version that did not refuse it).
    """

    write_error: float = 0.0
    snapshot_error: float = 0.0
    full: tuple[int, int] = (0, 0)
    full_seconds: tuple[float, float] = (60.0, 600.0)
    finish_kill: float = 0.0
    sigterm: float = 0.0
    poison: float = 0.0
    poison_journal: float = 0.0

    def draw(self, rng: random.Random, *, start: float, horizon: float, epochs: int) -> MachinePlan:
        """One seed's plan: full-disk spans, the kill in ``finish()``, the poisoned epoch."""
        spans = []
        for _ in range(rng.randint(*self.full)):
            begin = start + rng.uniform(0.0, horizon)
            spans.append((begin, begin + rng.uniform(*self.full_seconds)))
        kill: FinishKill | None = None
        kill_at = 0
        if rng.random() < self.finish_kill:
            if rng.random() < self.sigterm:
                kill = "sigterm"
            else:
                kill = "write" if rng.random() < 0.5 else "request"
            kill_at = rng.randint(1, 3)
        poison_epoch = rng.randrange(max(1, epochs)) if rng.random() < self.poison else None
        return MachinePlan(
            full=tuple(sorted(spans)),
            finish_kill=kill,
            kill_at=kill_at,
            term_after=rng.uniform(0.0, 1.0),
            poison_epoch=poison_epoch,
            poison_kind=rng.choice(POISONS),
            poison_journal=rng.random() < self.poison_journal,
        )

    def text(self) -> str:
        """The faults in words, with their rates (for the docs' profile table)."""
        parts = []
        if self.write_error:
            parts.append(f"{self.write_error * 100:g}% of outbox writes fail (ENOSPC or EIO)")
        if self.snapshot_error:
            parts.append(f"{self.snapshot_error * 100:g}% of snapshots fail part way")
        if self.full[1]:
            lo, hi = self.full
            count = str(lo) if lo == hi else f"{lo}–{hi}"
            a, b = self.full_seconds
            parts.append(f"{count} × disk full for {a:g}–{b:g} s, then freed")
        if self.finish_kill:
            share = f"{self.finish_kill * 100:g}% of seeds"
            parts.append(
                f"{share}: killed inside finish() ({self.sigterm * 100:g}% of them SIGTERM, "
                "the rest SIGKILL at a drawn write or request), then `hubfsm sync`"
            )
        if self.poison:
            parts.append(
                f"{self.poison * 100:g}% of seeds log one epoch with a value JSON cannot carry "
                f"({', '.join(POISONS)})"
            )
        if self.poison_journal:
            parts.append(
                f"{self.poison_journal * 100:g}% of deaths leave such a record in the journal"
            )
        return "; ".join(parts) or "none"


@attrs.frozen
class MachinePlan:
    """One seed's draw of :class:`MachineFaults`.

    Attributes:
        full: The spans of virtual time during which the disk is full.
        finish_kill: How the process dies inside ``finish()``, if it does.
        kill_at: At which outbox write or request after ``finish()`` began it is killed.
        term_after: Seconds ``finish()`` waits before a ``SIGTERM`` arrives.
        poison_epoch: The epoch whose metrics carry a value JSON cannot carry.
        poison_kind: Which value (see :data:`POISONS`).
        poison_journal: Whether the next death leaves a poison record in the journal.
    """

    full: tuple[tuple[float, float], ...] = ()
    finish_kill: FinishKill | None = None
    kill_at: int = 0
    term_after: float = 0.0
    poison_epoch: int | None = None
    poison_kind: str = "int-key"
    poison_journal: bool = False


class Terminated(Crash):
    """The process got ``SIGTERM``: its exit path runs, then it is gone."""


class Machine:
    """Applies one seed's machine faults to the outbox writes, snapshots and requests.

    Args:
        faults: The profile's machine faults.
        plan: This seed's draw of them.
        rng: Draws each write's fate.
        clock: The virtual clock.
        note: Records a fault in the trace.
    """

    def __init__(
        self,
        faults: MachineFaults,
        plan: MachinePlan,
        rng: random.Random,
        clock: Callable[[], float],
        note: Callable[[str], None],
    ) -> None:
        self.faults = faults
        self.plan = plan
        self.rng = rng
        self.clock = clock
        self.note = note
        #: Faults injected so far (failed writes and snapshots, kills, poison records).
        self.injected = 0
        #: Writes fail only while a session trains or finishes (not while it opens).
        self.armed = False
        #: A partial temporary file is left on the disk: it holds every free byte.
        self.leaked = False
        #: True once the drawn kill inside ``finish()`` happened.
        self.killed = False
        self._kill: FinishKill | None = None
        self._count = 0
        self._was_full = False

    def _full(self) -> bool:
        if self.leaked:
            return True
        now = self.clock()
        full = any(begin <= now < end for begin, end in self.plan.full)
        if full != self._was_full:
            self._was_full = full
            self.note("the disk is full" if full else "space is freed on the disk")
        return full

    def _error(self, what: str, rate: float) -> OSError | None:
        if not self.armed:
            return None
        full = self._full()
        if not full and (not rate or self.rng.random() >= rate):
            return None
        code = errno.ENOSPC if full or self.rng.random() < 0.7 else errno.EIO
        self.injected += 1
        name = errno.errorcode[code]
        self.note(f"{what} fails with {name}")
        return OSError(code, f"{name} (simulated): {what}")

    def before_write(self) -> None:
        """An outbox write is about to happen: the process may die, or the write fail.

        Raises:
            Crash: The process is killed here.
            OSError: The write fails; nothing of it is written.
        """
        self._tick("write")
        error = self._error("an outbox write", self.faults.write_error)
        if error is not None:
            raise error

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Give a journal its blocks, as ``os.posix_fallocate`` does, unless the disk is full.

        The disk's fullness holds whether a session trains or opens: a journal made
        while the disk is full cannot have its blocks.

        Raises:
            OSError: ``ENOSPC``: the disk is full.
        """
        if self._full():
            self.injected += 1
            self.note("the journal's blocks cannot be allocated: ENOSPC")
            raise OSError(errno.ENOSPC, "ENOSPC (simulated): the journal's blocks")
        os.posix_fallocate(fd, offset, length)

    def snapshot_error(self) -> OSError | None:
        """Whether the snapshot being copied fails part way (the error, if so)."""
        return self._error("a snapshot copy", self.faults.snapshot_error)

    def arm_finish_kill(self) -> None:
        """``finish()`` begins: count writes and requests towards the drawn kill."""
        if self.plan.finish_kill in ("write", "request"):
            self._kill = self.plan.finish_kill
            self._count = 0

    def _tick(self, kind: FinishKill) -> None:
        if self._kill != kind:
            return
        self._count += 1
        if self._count >= self.plan.kill_at:
            self._kill = None
            self.killed = True
            self.injected += 1
            where = "an outbox write" if kind == "write" else "a request"
            self.note(f"the process is killed (SIGKILL) inside finish(), at {where}")
            raise Crash(f"the process is killed inside finish(), at {where}")

    def killing(self, handler: Handler) -> Handler:
        """``handler``, with the kill inside ``finish()`` at a drawn request, before it leaves."""

        def answer(request: Request) -> Response:
            self._tick("request")
            return handler(request)

        return answer
