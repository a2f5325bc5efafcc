"""The real-time runner: one background worker thread drives the core with the real clock.

The training thread only appends events to an inbox; the worker takes them, runs the
state machine, sends what the core asks for and sleeps until the core's next wake-up.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from hubfsm.core.engine import Core, Send
from hubfsm.durable.journal import Journal
from hubfsm.durable.outbox import Outbox
from hubfsm.logs import get_logger
from hubfsm.transport import Outcome, Transport, TransportError

log = get_logger("hubfsm")


def _say(level: str, event: str, **fields: Any) -> None:
    """Log from the worker; a broken log sink must not stop delivery."""
    with contextlib.suppress(Exception):  # there is nowhere left to report it
        getattr(log, level)(event, **fields)


#: A retry wait at least this long (seconds) is announced as a warning when it begins.
LONG_WAIT = 5.0


#: An event for the worker: a function of the core and the current time.
Job = Callable[[Core, float], Any]


class ThreadRunner:
    """Runs a :class:`Core` on one daemon worker thread.

    With an outbox attached, the worker writes the core's changes to it before sending
    the request that depends on them, and after each outcome.

    Args:
        core: The session's core; only the worker touches it once started.
        transport: Where requests go.
        clock: A monotonic clock in seconds.
        name: The worker thread's name.
        nap: The longest the worker sleeps before it looks at the inbox on its own.
    """

    def __init__(
        self,
        core: Core,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "hubfsm-worker",
        nap: float = 0.25,
    ) -> None:
        self.core = core
        self.transport = transport
        self.clock = clock
        self.nap = nap
        #: ``(journal seq or 0, job, *args)`` from the trainer, in order; the worker runs
        #: ``job(*args, core, now)``. The arguments ride along so that the training
        #: thread need not build a ``functools.partial`` for each call.
        self.inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self.outbox: Outbox | None = None
        self.journal: Journal | None = None
        self.wake = threading.Event()
        self._changed = threading.Condition()
        self._stop_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.job_errors: list[BaseException] = []

    def start(self) -> None:
        """Start the worker."""
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Hand ``job`` to the worker; returns at once."""
        self.inbox.append((0, job))
        if not self.wake.is_set():
            self.wake.set()

    def wait_for(self, predicate: Callable[[Core], bool], timeout: float | None) -> bool:
        """Block until ``predicate(core)`` holds after a worker step, or ``timeout`` passes."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._changed:
            while not predicate(self.core):
                if not self._thread.is_alive():
                    return predicate(self.core)
                remaining = None if deadline is None else deadline - self.clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(1.0 if remaining is None else min(remaining, 1.0))
            return True

    def call(self, job: Job, *, timeout: float = 60.0) -> Any:
        """Run ``job`` on the worker and return its result (or raise its exception)."""
        box: list[Any] = []
        done = threading.Event()

        def wrapped(core: Core, now: float) -> None:
            try:
                box.append((True, job(core, now)))
            except Exception as exc:
                box.append((False, exc))
                raise
            finally:
                done.set()

        if not self._thread.is_alive():
            # Before start or after stop, the caller's thread is the only one.
            with contextlib.suppress(Exception):
                wrapped(self.core, self.clock())
            self._persist()
        else:
            self.submit(wrapped)
        if not done.wait(timeout):
            raise TimeoutError(f"the worker did not answer within {timeout:g}s")
        ok, value = box[0]
        if not ok:
            if value in self.job_errors:
                self.job_errors.remove(value)
            raise value
        return value

    def stop(self, *, timeout: float) -> None:
        """Let the worker send what it can for ``timeout`` seconds more, then end it."""
        self.submit(lambda core, now: None)
        self._stop_at = self.clock() + timeout
        self.wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # The worker may be inside one request; its own timeouts bound that.
            self._thread.join(timeout + 1.0)
        elif not self._thread.is_alive():
            self._drain()

    # -- the worker -----------------------------------------------------------------

    def _loop(self) -> None:
        core = self.core
        while True:
            self.wake.clear()
            self._drain()
            now = self.clock()
            stop_at = self._stop_at
            if stop_at is not None and (now >= stop_at or core.drained or not core.machine.sends):
                self._notify()
                return
            action = core.poll(now)
            if isinstance(action, Send):
                self._send(action)
                self._notify()
                continue
            self._persist()
            self._notify()
            # Never sleep longer than a nap: the trainer's log calls do not wake the
            # worker (a wake-up costs the training thread a system call and the GIL),
            # so the worker looks at the inbox on its own this often.
            wake = now + self.nap if action.until is None else min(action.until, now + self.nap)
            if stop_at is not None:
                wake = min(wake, stop_at)
            self.wake.wait(max(0.0, wake - now))

    def _drain(self) -> None:
        inbox = self.inbox
        core = self.core
        last_seq = 0
        while inbox:
            seq, job, *args = inbox.popleft()
            last_seq = seq or last_seq
            try:
                job(*args, core, self.clock())
            except Exception as exc:  # one bad event must not kill the worker
                self.job_errors.append(exc)
                _say("error", "session.event_failed", error=str(exc), state=core.state)
        self._persist(journal_seq=last_seq or None)

    def _persist(self, *, journal_seq: int | None = None) -> None:
        outbox = self.outbox
        if outbox is None:
            return
        changes = self.core.take_changes()
        if not changes and journal_seq is None:
            return
        try:
            outbox.apply(changes, journal_seq=journal_seq)
        except Exception as exc:  # a full disk must not stop delivery of what is in memory
            _say("error", "outbox.write_failed", error=str(exc), model_id=self.core.model_id)
            return
        if journal_seq is not None and self.journal is not None:
            self.journal.consumed(journal_seq)

    def _send(self, action: Send) -> None:
        # The operation and its key are on disk before the hub can act on them.
        self._persist()
        outcome: Outcome
        try:
            outcome = self.transport.send(action.request)
        except TransportError as exc:
            outcome = exc
        except Exception as exc:  # a transport bug must not kill the worker either
            outcome = TransportError("protocol", f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, TransportError):
            _say(
                "warning",
                "request.failed",
                channel=action.channel,
                attempt=action.attempt,
                kind=outcome.kind,
                error=str(outcome),
            )
        elif not outcome.ok:
            _say(
                "warning",
                "request.failed",
                channel=action.channel,
                attempt=action.attempt,
                status=outcome.status,
                message=outcome.message,
                retry_after=outcome.retry_after,
            )
        self.core.receive(action.op_id, outcome, now=self.clock())
        wait = self.core.retry_wait
        if wait is not None and wait >= LONG_WAIT:
            # Said before the wait begins, so a quiet terminal never looks hung.
            _say("warning", "request.waiting", channel=action.channel, seconds=round(wait, 1))
        self._persist()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
