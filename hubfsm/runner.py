"""The real-time runner: one background worker thread drives the core with the real clock.

The training thread only appends events to an inbox; the worker takes them, runs the
state machine, sends what the core asks for and sleeps until the core's next wake-up.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from hubfsm.core import Core, Send
from hubfsm.transport import Outcome, Transport, TransportError

log = structlog.get_logger("hubfsm")

#: An event for the worker: a function of the core and the current time.
Job = Callable[[Core, float], Any]


class ThreadRunner:
    """Runs a :class:`Core` on one daemon worker thread.

    Args:
        core: The session's core; only the worker touches it once started.
        transport: Where requests go.
        clock: A monotonic clock in seconds.
        name: The worker thread's name.
    """

    def __init__(
        self,
        core: Core,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "hubfsm-worker",
    ) -> None:
        self.core = core
        self.transport = transport
        self.clock = clock
        self.inbox: collections.deque[Job] = collections.deque()
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
        self.inbox.append(job)
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

    def stop(self, *, timeout: float) -> None:
        """Let the worker send what it can for ``timeout`` seconds more, then end it."""
        self.submit(lambda core, now: None)
        self._stop_at = self.clock() + timeout
        self.wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # The worker may be inside one request; its own timeouts bound that.
            self._thread.join(timeout + 1.0)

    @property
    def alive(self) -> bool:
        """True while the worker runs."""
        return self._thread.is_alive()

    # -- the worker -----------------------------------------------------------------

    def _loop(self) -> None:
        core = self.core
        while True:
            self.wake.clear()
            self._drain()
            now = self.clock()
            stop_at = self._stop_at
            if stop_at is not None and (
                now >= stop_at or core.drained or core.state in ("done", "failed")
            ):
                self._notify()
                return
            action = core.poll(now)
            if isinstance(action, Send):
                self._send(action)
                self._notify()
                continue
            self._notify()
            wake = action.until
            if stop_at is not None:
                wake = stop_at if wake is None else min(wake, stop_at)
            self.wake.wait(None if wake is None else max(0.0, wake - now))

    def _drain(self) -> None:
        inbox = self.inbox
        core = self.core
        while inbox:
            job = inbox.popleft()
            try:
                job(core, self.clock())
            except Exception as exc:  # one bad event must not kill the worker
                self.job_errors.append(exc)
                log.error("session.event_failed", error=str(exc), state=core.state)

    def _send(self, action: Send) -> None:
        outcome: Outcome
        try:
            outcome = self.transport.send(action.request)
        except TransportError as exc:
            outcome = exc
        except Exception as exc:  # a transport bug must not kill the worker either
            outcome = TransportError("protocol", f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, TransportError):
            log.warning(
                "request.failed",
                channel=action.channel,
                attempt=action.attempt,
                kind=outcome.kind,
                error=str(outcome),
            )
        elif not outcome.ok:
            log.warning(
                "request.failed",
                channel=action.channel,
                attempt=action.attempt,
                status=outcome.status,
                message=outcome.message,
                retry_after=outcome.retry_after,
            )
        self.core.receive(action.op_id, outcome, now=self.clock())

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
