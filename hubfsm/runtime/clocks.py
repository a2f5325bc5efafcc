"""Clocks for the driver: the monotonic clock with real sleeps, and virtual time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the driver and its shells need of a clock."""

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
