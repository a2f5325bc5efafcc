"""The inline shell: the driver runs on the calling thread, on a virtual (or real) clock.

Requests go through any :class:`~hubfsm.transport.Transport` (in practice the in-memory
hub behind a fault injector that advances the same clock), so a whole training session
runs in milliseconds and a seed replays it exactly. Trainer calls wait in the driver's
inbox until the simulation lets time pass (:meth:`SimRunner.run_until`); the calls that
wait for the hub (opening, ``finish``) run the driver until what they wait for holds.
Virtual time (:class:`VirtualClock`) is here with the shell it serves. With the
worker's :class:`~hubfsm.runtime.worker.RealClock` the same shell drives a session over
real HTTP, still on the calling thread, so an observer sees every request and outcome
in order.
"""

from __future__ import annotations

from collections.abc import Callable

from hubfsm.core.engine import Core
from hubfsm.core.values import Event
from hubfsm.runtime.driver import Driver

__all__ = ["RunTimeout", "SimRunner", "VirtualClock"]


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
