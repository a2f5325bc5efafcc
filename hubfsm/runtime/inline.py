"""The calling-thread runner: one thread drives the core with a virtual (or real) clock.

Requests go through any :class:`~hubfsm.transport.Transport` (in practice the in-memory
hub behind a fault injector that advances the same clock), so a whole training session
runs in milliseconds and a seed replays it exactly. With a :class:`RealClock` the same
runner drives a session over real HTTP, still on the calling thread, so an observer sees
every request and outcome in order.
"""

from __future__ import annotations

import time
from typing import Protocol

from hubfsm.core.engine import Core, Send
from hubfsm.transport import Outcome, Transport, TransportError


class Clock(Protocol):
    """What the runner needs of a clock."""

    def __call__(self) -> float:
        """The current time in seconds."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""

    def sleep_until(self, when: float) -> None:
        """Let time pass until ``when`` (no-op if it is past)."""


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


class Observer(Protocol):
    """Watches each request the runner sends (for traces and invariant checks)."""

    def sent(self, now: float, send: Send) -> None:
        """A request is about to leave."""

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """The request's outcome came back."""


class RunTimeout(RuntimeError):
    """The runner went past its deadline (a bound on a run's length, not a session error)."""


class SimRunner:
    """Drives a :class:`Core` on the calling thread.

    Args:
        core: The session's core.
        transport: Where requests go; it may advance ``clock`` (latency, timeouts).
        clock: The clock; a :class:`VirtualClock` makes runs instant and repeatable.
        latency: Seconds each request takes on top of what the transport adds (virtual
            clocks only; pass 0 with a real one).
        observer: Told of every request and outcome.
        max_steps: A bound on requests per run call, so a bug cannot spin.
        deadline: Clock time after which a run call raises :class:`RunTimeout`.
    """

    def __init__(
        self,
        core: Core,
        transport: Transport,
        clock: Clock,
        *,
        latency: float = 0.05,
        observer: Observer | None = None,
        max_steps: int = 100_000,
        deadline: float = float("inf"),
    ) -> None:
        self.core = core
        self.transport = transport
        self.clock = clock
        self.latency = latency
        self.observer = observer
        self.max_steps = max_steps
        self.deadline = deadline

    def step(self) -> float | None:
        """Send one due request, or say when the next one is due.

        Returns:
            None after sending; otherwise the time the core wants to wake (``inf`` if never).
        """
        clock = self.clock
        now = clock()
        if now >= self.deadline:
            raise RunTimeout(f"the run went past its deadline at t={now:.3f}")
        action = self.core.poll(now)
        if not isinstance(action, Send):
            return float("inf") if action.until is None else action.until
        observer = self.observer
        if observer is not None:
            # The time the core decided at, so limits are checked against its own view.
            observer.sent(now, action)
        outcome: Outcome
        try:
            outcome = self.transport.send(action.request)
        except TransportError as exc:
            outcome = exc
        if self.latency:
            clock.sleep(self.latency)
        now = clock()
        if observer is not None:
            observer.answered(now, action, outcome)
        self.core.receive(action.op_id, outcome, now=now)
        return None

    def run_until(self, until: float) -> None:
        """Run the core until clock time ``until``; the clock ends there or just past it."""
        clock = self.clock
        for _ in range(self.max_steps):
            wake = self.step()
            if wake is None:
                continue
            if wake > until:
                clock.sleep_until(min(until, self.deadline))
                return
            clock.sleep_until(wake)
        raise RuntimeError(f"no progress after {self.max_steps} steps at t={clock():.3f}")

    def run_while(self, states: tuple[str, ...], *, limit: float) -> None:
        """Run while the core is in one of ``states``, for at most ``limit`` seconds."""
        clock = self.clock
        end = clock() + limit
        for _ in range(self.max_steps):
            if self.core.state not in states or clock() >= end:
                return
            wake = self.step()
            if wake is None:
                continue
            clock.sleep_until(min(wake, end, self.deadline))
        raise RuntimeError(f"no progress after {self.max_steps} steps at t={clock():.3f}")
