"""The simulated runner: a virtual clock and one thread drive the core, seeded.

Requests go through any :class:`~hubfsm.transport.Transport` (in practice the in-memory
hub behind a fault injector that advances the same clock), so a whole training session
runs in milliseconds and a seed replays it exactly.
"""

from __future__ import annotations

from typing import Protocol

from hubfsm.core import Core, Send
from hubfsm.transport import Outcome, Transport, TransportError


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


class Observer(Protocol):
    """Watches each request the runner sends (for traces and invariant checks)."""

    def sent(self, now: float, send: Send) -> None:
        """A request is about to leave."""

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        """The request's outcome came back."""


class SimRunner:
    """Drives a :class:`Core` with a :class:`VirtualClock`.

    Args:
        core: The session's core.
        transport: Where requests go; it may advance ``clock`` (latency, timeouts).
        clock: The virtual clock.
        latency: Virtual seconds each request takes on top of what the transport adds.
        observer: Told of every request and outcome.
        max_steps: A bound on requests per :meth:`run_until` call, so a bug cannot spin.
    """

    def __init__(
        self,
        core: Core,
        transport: Transport,
        clock: VirtualClock,
        *,
        latency: float = 0.05,
        observer: Observer | None = None,
        max_steps: int = 100_000,
    ) -> None:
        self.core = core
        self.transport = transport
        self.clock = clock
        self.latency = latency
        self.observer = observer
        self.max_steps = max_steps

    def step(self) -> float | None:
        """Send one due request, or say when the next one is due.

        Returns:
            None after sending; otherwise the time the core wants to wake (``inf`` if never).
        """
        core = self.core
        clock = self.clock
        action = core.poll(clock.now)
        if not isinstance(action, Send):
            return float("inf") if action.until is None else action.until
        if self.observer is not None:
            self.observer.sent(clock.now, action)
        outcome: Outcome
        try:
            outcome = self.transport.send(action.request)
        except TransportError as exc:
            outcome = exc
        clock.sleep(self.latency)
        if self.observer is not None:
            self.observer.answered(clock.now, action, outcome)
        core.receive(action.op_id, outcome, now=clock.now)
        return None

    def run_until(self, until: float) -> None:
        """Run the core until virtual time ``until``; the clock ends there or just past it."""
        clock = self.clock
        for _ in range(self.max_steps):
            wake = self.step()
            if wake is None:
                continue
            if wake > until:
                clock.now = max(clock.now, until)
                return
            clock.now = max(clock.now, wake)
        raise RuntimeError(f"no progress after {self.max_steps} steps at t={clock.now:.3f}")

    def run_while(self, states: tuple[str, ...], *, limit: float) -> None:
        """Run while the core is in one of ``states``, for at most ``limit`` virtual seconds."""
        clock = self.clock
        end = clock.now + limit
        for _ in range(self.max_steps):
            if self.core.state not in states or clock.now >= end:
                return
            wake = self.step()
            if wake is None:
                continue
            clock.now = max(clock.now, min(wake, end))
        raise RuntimeError(f"no progress after {self.max_steps} steps at t={clock.now:.3f}")
