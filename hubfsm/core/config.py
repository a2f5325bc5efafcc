"""What the core is configured with: the hub's limits, retry policies, and its channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from hubfsm.core import protocol
from hubfsm.core.retry import ChannelPolicies

#: Channels in the order the core serves them when several are due at once.
CHANNELS = ("control", "heartbeat", "metrics", "checkpoint", "final")

#: The channels that carry the trainer's data (kept durably until acknowledged).
DATA_CHANNELS = ("metrics", "checkpoint", "final")

#: Called as ``notify(event, fields)`` for what the runner should log as a warning.
Notify = Callable[[str, dict[str, Any]], None]


@attrs.frozen
class Limits:
    """Minimum seconds between sends on each rate-limited channel (the hub's limits).

    Attributes:
        metrics: Between any two metrics requests, retries included.
        checkpoint: Between the starts of two epoch-weight uploads (retries of one excepted).
        heartbeat: Between two heartbeats (retries of one excepted).
        park: How long a channel rests after its policy gave up, before a fresh round.
        checkpoint_grace: The most a checkpoint held back by the limit waits, once the
            limit clears, for newer weights to replace it.
    """

    metrics: float = 3.0
    checkpoint: float = 900.0
    heartbeat: float = 300.0
    park: float = 60.0
    checkpoint_grace: float = 120.0

    def scaled(self, factor: float) -> Limits:
        """Every limit times ``factor``."""
        return Limits(*(value * factor for value in attrs.astuple(self)))


@attrs.frozen
class CoreConfig:
    """What the core needs to know beyond the events themselves."""

    limits: Limits = Limits()
    policies: ChannelPolicies = ChannelPolicies()
    #: Where idempotency keys come from: the OS's randomness unless a simulation seeds it.
    nonce: protocol.KeySource = protocol.os_nonce
    #: The protocol dialect spoken: ``hub`` or ``platform`` (see :mod:`hubfsm.core.dialect`).
    protocol: str = "hub"

    def scaled(self, factor: float) -> CoreConfig:
        """The same behaviour on a clock ``factor`` times as fast.

        Every limit and wait is multiplied by ``factor`` (``0.001`` turns the 900 s
        checkpoint limit into 0.9 s): for rehearsals and tests that drive a real
        session in real time.
        """
        return attrs.evolve(
            self, limits=self.limits.scaled(factor), policies=self.policies.scaled(factor)
        )


@attrs.define
class Stats:
    """Counters of what the core asked for and what came back."""

    sent: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(CHANNELS, 0))
    retries: int = 0
    give_ups: int = 0
    acknowledged_epochs: int = 0
    checkpoints: int = 0
