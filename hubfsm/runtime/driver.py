"""The one driver: trainer events and transport outcomes in, requests out, all kept durably.

Each turn: take in the trainer's events (persist them), ask the core what to do, send
it (persisting what the request depends on first), take the outcome in, persist again.
The driver holds no policy and no thread; two shells run it
(:mod:`hubfsm.runtime.shells`): the background worker (real clock) and the inline shell
(virtual clock, for the simulator). The core's transitions happen inside the driver's
calls, so who hears of them (the log, the session told of a refusal: :class:`Hooks`) is
here too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from hubfsm.core.engine import Core
from hubfsm.core.values import (
    Barrier,
    CheckpointOffered,
    EpochEnded,
    Event,
    FinishPending,
    FinishRequested,
    Interrupted,
    Resumed,
    Send,
    Start,
)
from hubfsm.durable.handover import Inbox, Taken
from hubfsm.durable.port import Durability
from hubfsm.errors import HubfsmError
from hubfsm.logs import get_logger
from hubfsm.transport import Outcome, Transport, TransportError

if TYPE_CHECKING:
    from hubfsm.runtime.console import Console

log = get_logger("hubfsm")

#: A retry wait at least this long (seconds) is logged when it begins.
LONG_WAIT = 5.0


#: Logs from the driver; a broken log sink must not stop delivery.
_say = log.safely


class _Quiet:
    """A logger that logs nothing (for the simulator's thousands of sessions)."""

    def __getattr__(self, name: str) -> Any:
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


#: Stands in for the log where a composition asked for quiet.
QUIET: Any = _Quiet()


class Clock(Protocol):
    """What the driver and its shells need of a clock (the worker's real one, or virtual time)."""

    def __call__(self) -> float:
        """The current time in seconds."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""

    def sleep_until(self, when: float) -> None:
        """Let time pass until ``when`` (no-op if it is past)."""


class Observer(Protocol):
    """Watches each request the driver sends (for traces and invariant checks)."""

    def sent(self, now: float, send: Send) -> None:
        """A request is about to leave."""

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """The request's outcome came back."""


@attrs.define
class Hooks:
    """Who hears of the core's transitions: the log, and who is told of a refusal.

    :meth:`changed` is the core's ``on_change``; it runs on the driver's thread.
    """

    #: Called on the driver's thread when the hub refuses the key or the model (the
    #: session adds itself).
    refused: list[Callable[[], None]] = attrs.Factory(list)
    #: Told of every transition in place of the log line (the simulator's checker).
    told: Callable[[str, str, str], None] | None = None
    #: The core whose transitions these are, once made (its model id goes in the log).
    core: Core | None = None

    def changed(self, source: str, event: str, dest: str) -> None:
        """The core moved from ``source`` to ``dest`` on ``event``."""
        if self.told is not None:
            self.told(source, event, dest)
        elif source != dest:
            model_id = self.core.model_id if self.core is not None else None
            log.info("session.transition", model_id=model_id, source=source, trigger=event,
                     dest=dest)  # fmt: skip
        if source != dest and event == "refuse":
            for hook in self.refused:
                hook()


@attrs.define(eq=False)
class Ticket:
    """A caller waiting for one event to be taken in; ``error`` if applying it failed."""

    done: threading.Event = attrs.Factory(threading.Event)
    error: Exception | None = None


class Driver:
    """Drives one :class:`Core`: the poll / send / receive loop, with durability.

    Args:
        core: The session's core; only the driver's thread touches it once running.
        transport: Where requests go.
        clock: The clock the core's decisions use.
        inbox: The trainer's events (shared with the journal); default a new one.
        durability: The outbox and journal, or None to keep nothing on disk.
        offline: Record everything and send nothing (the final weights only recorded).
        observer: Told of every request and outcome.
        latency: Seconds each request takes on top of what the transport adds
            (virtual clocks only).
        quiet: Log nothing (the simulator's thousands of runs).
    """

    def __init__(
        self,
        core: Core,
        transport: Transport,
        *,
        clock: Clock,
        inbox: Inbox | None = None,
        durability: Durability | None = None,
        offline: bool = False,
        observer: Observer | None = None,
        latency: float = 0.0,
        quiet: bool = False,
    ) -> None:
        self.core = core
        self.transport = transport
        self.clock = clock
        self.offline = offline
        self.observer = observer
        self.latency = latency
        self.quiet = quiet
        #: The trainer's calls, in order.
        self.inbox = Inbox() if inbox is None else inbox
        self.durability = durability
        #: Errors of events that could not be applied (a changed file, an illegal event).
        self.errors: list[Exception] = []
        self._watched: dict[int, Ticket] = {}
        #: How far the journal is taken in, not yet written to the outbox.
        self._journal_seq: int | None = None
        #: Tells a person when the hub is lost and back (None: say nothing).
        self.console: Console | None = None
        #: The last request's outcome (None before the first): what closing and sync
        #: judge the hub by.
        self.last_outcome: Outcome | None = None
        #: Checkpoints not kept in a row (no room): said once a stretch, not per epoch.
        self._not_kept = 0

    # -- the trainer's side ---------------------------------------------------------

    def watch(self, event: Event) -> Ticket:
        """A ticket that is done once ``event`` (this very object) has been taken in."""
        ticket = Ticket()
        self._watched[id(event)] = ticket
        return ticket

    def drain(self, *, persist: bool = True) -> None:
        """Apply every queued event to the core, then persist the result.

        Args:
            persist: Write to the outbox now. A loop that goes on to :meth:`step` (which
                writes before it sends, and before it waits) passes False, so an epoch's
                events and the request they open go to the outbox in one transaction;
                the journal holds the events until then.
        """
        last_seq = 0
        for taken in self.inbox.take_all():
            last_seq = taken.seq or last_seq
            error: Exception | None = None
            try:
                self.apply(taken, self.clock())
            except Exception as exc:  # one bad event must not stop the driver
                error = exc
                self.errors.append(exc)
                if not self.quiet:
                    _say("error", "session.event_failed", error=str(exc), state=self.core.state)
            if self._watched:
                ticket = self._watched.pop(id(taken.event), None)
                if ticket is not None:
                    ticket.error = error
                    ticket.done.set()
        if last_seq:
            self._journal_seq = last_seq
        if persist:
            self.persist()

    def apply(self, taken: Taken, now: float) -> None:
        """Apply one trainer call to the core (an offer comes with its upload part)."""
        core = self.core
        event = taken.event
        if isinstance(event, EpochEnded):
            core.epoch_end(event.epoch, event.metrics, now=now)
        elif isinstance(event, CheckpointOffered):
            part = taken.part
            if taken.error is not None:
                # No room for a copy and no held link to keep instead: this checkpoint
                # is not kept, and training goes on (the next offer may fit). A person
                # reads it once, not at every epoch the disk stays full.
                self._not_kept += 1
                if not self.quiet:
                    first = self._not_kept == 1
                    level = "warning" if first else "info"
                    name = "checkpoint.not_kept" if first else "checkpoint.still_not_kept"
                    _say(level, name, model_id=core.model_id, epoch=event.epoch,
                         error=str(taken.error))  # fmt: skip
                return
            if part is None:
                if not self.quiet:
                    _say("info", "checkpoint.superseded", model_id=core.model_id, epoch=event.epoch)
                return
            if self._not_kept and not self.quiet:
                _say("warning", "checkpoint.kept_again", model_id=core.model_id,
                     epoch=event.epoch, not_kept=self._not_kept)  # fmt: skip
            self._not_kept = 0
            core.checkpoint(event.epoch, part, is_best=event.is_best, now=now)
        elif isinstance(event, FinishRequested):
            part = taken.part
            if part is None:
                if taken.error is not None:
                    raise taken.error
                raise HubfsmError(
                    f"{event.path} changed while it was being read; call finish again"
                )
            if taken.error is not None and not self.quiet:
                # Uploaded from the trainer's file: a later ``hubfsm sync`` would not
                # have the final weights.
                _say("warning", "final.not_kept", model_id=core.model_id, error=str(taken.error))
            core.finish(event.epoch, part, map50_95=event.map50_95, now=now, timeout=event.timeout)
            if self.offline:
                core.interrupt(now=now)
        elif isinstance(event, FinishPending):
            saved = core.saved_final
            if saved is None:
                raise HubfsmError("no final weights are pending for this model")
            epoch, part, map50_95 = saved
            core.finish(epoch, part, map50_95=map50_95, now=now, timeout=event.timeout)
        elif isinstance(event, Start):
            core.start(now=now)
        elif isinstance(event, Interrupted):
            core.interrupt(now=now)
        elif isinstance(event, Resumed):
            core.resume(now=now)
        else:
            assert isinstance(event, Barrier)

    # -- the hub's side -------------------------------------------------------------

    def step(self) -> float | None:
        """Send one due request, or say when the core next wants to run.

        Returns:
            None after sending; otherwise the time the core wants to wake (``inf``: never).
        """
        now = self.clock()
        action = self.core.poll(now)
        if isinstance(action, Send):
            self.send(action, now)
            return None
        self.persist()
        return math.inf if action.until is None else action.until

    def send(self, action: Send, now: float) -> None:
        """Send one request and hand the core its outcome."""
        # The operation and its key are on disk before the hub can act on them.
        self.persist()
        observer = self.observer
        if observer is not None:
            # The time the core decided at, so limits are checked against its own view.
            observer.sent(now, action)
        outcome: Outcome
        try:
            outcome = self.transport.send(action.request)
        except TransportError as exc:
            outcome = exc
        except Exception as exc:  # a transport bug must not kill the driver either
            outcome = TransportError("protocol", f"{type(exc).__name__}: {exc}")
        if self.latency:
            self.clock.sleep(self.latency)
        if not self.quiet:
            _log_failure(action, outcome)
        now = self.clock()
        if observer is not None:
            observer.answered(now, action, outcome)
        self.core.receive(action.op_id, outcome, now=now)
        self.last_outcome = outcome
        console = self.console
        if console is not None:
            console.outcome(self.core, action.channel, outcome, now)
        wait = self.core.retry_wait
        if wait is not None and wait >= LONG_WAIT and not self.quiet:
            # Per-attempt detail (-v); a person hears of an outage from the console.
            _say("info", "request.waiting", channel=action.channel, seconds=round(wait, 1))
        self.persist()

    # -- durability -----------------------------------------------------------------

    def persist(self) -> None:
        """Write the core's changes (and the journal's progress) to the outbox, if any."""
        durability = self.durability
        if durability is not None and durability.keep(self.core, self._journal_seq, self.clock):
            self._journal_seq = None


def _log_failure(action: Send, outcome: Outcome) -> None:
    # INFO: one line per attempt is detail for -v; the console says when the hub is lost.
    if isinstance(outcome, TransportError):
        _say(
            "info",
            "request.failed",
            channel=action.channel,
            attempt=action.attempt,
            kind=outcome.kind,
            error=str(outcome),
        )
    elif not outcome.ok:
        _say(
            "info",
            "request.failed",
            channel=action.channel,
            attempt=action.attempt,
            status=outcome.status,
            message=outcome.message,
            retry_after=outcome.retry_after,
        )
