"""The driver's two shells, each with its clock: the background worker, and the inline shell.

The worker (:class:`ThreadRunner`) is one daemon thread that runs the driver on the
real clock (:class:`RealClock`: monotonic, with real sleeps). The training thread only
appends events to the driver's inbox; the worker takes them in, runs the driver and
sleeps until the core's next wake-up.

The inline shell (:class:`SimRunner`) runs the driver on the calling thread, on virtual
time (:class:`VirtualClock`). Requests go through any
:class:`~hubfsm.transport.Transport` (in practice the in-memory hub behind a fault
injector that advances the same clock), so a whole training session runs in
milliseconds and a seed replays it exactly. Trainer calls wait in the driver's inbox
until the simulation lets time pass (:meth:`SimRunner.run_until`); the calls that wait
for the hub (opening, ``finish``) run the driver until what they wait for holds. With a
:class:`RealClock` the same shell drives a session over real HTTP, still on the calling
thread, so an observer sees every request and outcome in order.

Both answer what a session asks of its shell (``submit``, ``call``, ``wake_up``,
``wait_for``, ``stop``), so the session cannot tell them apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hubfsm.core.engine import Core
from hubfsm.core.values import Barrier, Event
from hubfsm.runtime.driver import Driver

__all__ = ["RealClock", "RunTimeout", "SimRunner", "ThreadRunner", "VirtualClock"]


# -- the worker, on the real clock ------------------------------------------------


class RealClock:
    """The monotonic clock, with real sleeps."""

    def __call__(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``."""
        if seconds > 0.0:
            time.sleep(seconds)

    def sleep_until(self, when: float) -> None:
        """Sleep until the monotonic clock reads ``when``."""
        self.sleep(when - time.monotonic())


class ThreadRunner:
    """Runs a :class:`Driver` on one daemon worker thread.

    Args:
        driver: The driver; only the worker touches it (and its core) once started.
        name: The worker thread's name.
        nap: The longest the worker sleeps before it looks at the inbox on its own.
    """

    def __init__(self, driver: Driver, *, name: str = "hubfsm-worker", nap: float = 0.25) -> None:
        self.driver = driver
        self.core = driver.core
        self.clock = driver.clock
        self.inbox = driver.inbox
        self.nap = nap
        self.wake = threading.Event()
        self._changed = threading.Condition()
        self._stop_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the worker."""
        self._thread.start()

    def submit(self, event: Event) -> None:
        """Hand ``event`` to the worker; returns at once."""
        self.inbox.put(event)
        if not self.wake.is_set():
            self.wake.set()

    def wake_up(self) -> None:
        """Let the worker look at the inbox now rather than at its next nap's end."""
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

    def call(self, event: Event, *, timeout: float = 60.0) -> None:
        """Hand ``event`` to the worker and wait until it is taken in.

        The inbox journals what a kill must not lose (the final weights) before the
        worker sees it, so a process killed before the worker takes it in still leaves
        it for recovery.

        Args:
            event: The event.
            timeout: Seconds to wait for the worker to take it in.

        Raises:
            TimeoutError: The worker did not take it in within ``timeout``.
            Exception: What applying the event raised.
        """
        ticket = self.driver.watch(event)
        self.inbox.put(event)
        if not self._thread.is_alive():
            # Before start or after stop, the caller's thread is the only one.
            self.driver.drain()
        else:
            self.wake_up()
        if not ticket.done.wait(timeout):
            raise TimeoutError(f"the worker did not answer within {timeout:g}s")
        if ticket.error is not None:
            if ticket.error in self.driver.errors:
                self.driver.errors.remove(ticket.error)
            raise ticket.error

    def stop(self, *, timeout: float) -> None:
        """Let the worker send what it can for ``timeout`` seconds more, then end it."""
        self.submit(Barrier())
        self._stop_at = self.clock() + timeout
        self.wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # The worker may be inside one request; its own timeouts bound that.
            self._thread.join(timeout + 1.0)
        elif not self._thread.is_alive():
            self.driver.drain()

    # -- the worker -----------------------------------------------------------------

    def _loop(self) -> None:
        driver = self.driver
        core = self.core
        while True:
            self.wake.clear()
            # Read before the inbox is taken in: stop() queues its events, and the
            # trainer's before them, ahead of setting the stop time, so a worker that
            # sees the stop takes them all in. Read after, a stop set in between would
            # end the worker with the last epoch's metrics still in the inbox, unsent.
            stop_at = self._stop_at
            driver.drain(persist=False)  # step() writes them with what it sends
            now = self.clock()
            if stop_at is not None and (now >= stop_at or core.drained or not core.machine.sends):
                driver.persist()
                self._notify()
                return
            until = driver.step()
            self._notify()
            if until is None:
                continue
            if stop_at is not None and until >= stop_at and not self.inbox:
                # Nothing will be due before the stop, and no event comes after it: a
                # checkpoint the hub's interval holds back, a retry later than the stop,
                # or the final weights finish() gave up on wait for a later session.
                # Waiting out the limit would only hold the trainer (and a scheduler's
                # grace after SIGTERM) for the same result.
                return
            # Never sleep longer than a nap: the trainer's log calls do not wake the
            # worker (a wake-up costs the training thread a system call and the GIL),
            # so the worker looks at the inbox on its own this often.
            wake = min(until, now + self.nap)
            if stop_at is not None:
                wake = min(wake, stop_at)
            self.wake.wait(max(0.0, wake - now))

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()


# -- the inline shell, on virtual time --------------------------------------------


class VirtualClock:
    """Time that moves only when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        """The current virtual time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        self.now += max(0.0, seconds)

    def sleep_until(self, when: float) -> None:
        """Jump to ``when`` unless the clock is already past it."""
        if when > self.now:
            self.now = when


class RunTimeout(RuntimeError):
    """The runner went past its deadline (a bound on a run's length, not a session error)."""


class SimRunner:
    """Runs a :class:`Driver` on the calling thread.

    Args:
        driver: The driver, on a clock the transport may advance (latency, timeouts).
        max_steps: A bound on requests per run call, so a bug cannot spin.
        deadline: Clock time after which a run call raises :class:`RunTimeout`.
    """

    def __init__(
        self, driver: Driver, *, max_steps: int = 100_000, deadline: float = float("inf")
    ) -> None:
        self.driver = driver
        self.core = driver.core
        self.clock = driver.clock
        self.inbox = driver.inbox
        self.max_steps = max_steps
        self.deadline = deadline

    # -- what a session asks of its shell -------------------------------------------

    @property
    def alive(self) -> bool:
        """Always False: there is no other thread."""
        return False

    def start(self) -> None:
        """Nothing to start: the driver runs when time passes."""

    def submit(self, event: Event) -> None:
        """Queue ``event``; it is taken in when time next passes."""
        self.inbox.put(event)

    def call(self, event: Event, *, timeout: float = 60.0) -> None:
        """Take ``event`` in now (after everything queued before it).

        As with the background shell, the inbox journals what a kill must not lose: a
        simulated death before the driver takes it in leaves it for recovery.

        Raises:
            Exception: What applying the event raised.
        """
        ticket = self.driver.watch(event)
        self.inbox.put(event)
        self.driver.drain()
        if ticket.error is not None:
            if ticket.error in self.driver.errors:
                self.driver.errors.remove(ticket.error)
            raise ticket.error

    def wake_up(self) -> None:
        """Nothing to wake: queued events are taken in when time next passes."""

    def wait_for(self, predicate: Callable[[Core], bool], timeout: float | None) -> bool:
        """Run the driver until ``predicate(core)`` holds, or ``timeout`` seconds pass."""
        end = self.clock() + (1e9 if timeout is None else timeout)
        return self._run(lambda: predicate(self.core), end)

    def stop(self, *, timeout: float) -> None:
        """Run the driver for at most ``timeout`` seconds more, while anything is pending."""
        core = self.core
        self._run(lambda: core.drained or not core.machine.sends, self.clock() + timeout)
        self.driver.drain()

    # -- what the simulator asks ----------------------------------------------------

    def step(self) -> float | None:
        """Take in queued events, then send one due request or say when one is due."""
        now = self.clock()
        if now >= self.deadline:
            raise RunTimeout(f"the run went past its deadline at t={now:.3f}")
        if self.inbox:
            self.driver.drain(persist=False)  # step() writes them with what it sends
        return self.driver.step()

    def run_until(self, until: float) -> None:
        """Run until clock time ``until``; the clock ends there or just past it."""
        clock = self.clock
        for _ in range(self.max_steps):
            wake = self.step()
            if wake is None:
                continue
            if wake > until:
                clock.sleep_until(min(until, self.deadline))
                if self.inbox:
                    self.driver.drain()
                return
            clock.sleep_until(wake)
        raise RuntimeError(f"no progress after {self.max_steps} steps at t={clock():.3f}")

    def run_while(self, states: tuple[str, ...], *, limit: float) -> None:
        """Run while the core is in one of ``states``, for at most ``limit`` seconds."""
        core = self.core
        self._run(lambda: core.state not in states, self.clock() + limit)

    def _run(self, done: Callable[[], bool], end: float) -> bool:
        clock = self.clock
        for _ in range(self.max_steps):
            if self.inbox:
                self.driver.drain()
            if done():
                return True
            if clock() >= end:
                return False
            wake = self.step()
            if wake is None:
                continue
            clock.sleep_until(min(wake, end, self.deadline))
        raise RuntimeError(f"no progress after {self.max_steps} steps at t={clock():.3f}")
