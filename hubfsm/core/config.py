"""What the core is configured with: its channels, the hub's limits, the retry policies.

The retry policies are pure: the clock and the random source come in as arguments, so a
seed fixes the schedule. Where idempotency keys come from is configured here too.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Callable
from typing import Any

import attrs

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
        park: How long a channel rests after its policy gave up, before a fresh round
            (while the final weights wait, a random time up to the policy's cap).
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


#: Makes the nonce of a core's idempotency keys, given the core's random source.
KeySource = Callable[[random.Random], str]


def os_nonce(rng: random.Random) -> str:
    """A nonce from the operating system's randomness; ``rng`` (a user's seed) is ignored.

    Two processes, or two machines, with the same seed must still send different keys:
    a hub that saw a key before replays its old answer (the first run's model, say).
    """
    del rng
    return secrets.token_hex(16)


def seeded_nonce(rng: random.Random) -> str:
    """A nonce drawn from ``rng``: for a simulation, whose whole world is seeded."""
    return f"{rng.getrandbits(64):016x}"


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and an overall deadline.

    The wait before retry ``n`` (``n = 0`` for the first retry) is drawn uniformly from
    ``[0, min(cap, base * 2**n)]``. A ``Retry-After`` from the hub is the floor of that
    wait, honoured up to ``max_retry_after``: a longer one counts as that long, so one
    answer cannot hold a session for longer. The policy gives up instead of waiting when
    the attempts are spent or when the next attempt would start past the deadline; it
    never waits after the last attempt.

    Attributes:
        base: Seconds; the bound of the first retry's wait.
        cap: Seconds; no jittered wait bound exceeds this.
        max_attempts: Attempts in all, the first one included.
        deadline: Seconds from the first attempt after which no attempt starts.
        max_retry_after: The longest ``Retry-After`` the policy honours; a longer one
            counts as this long.
    """

    base: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    cap: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    deadline: float = attrs.field(default=120.0, validator=attrs.validators.ge(0))
    max_retry_after: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))

    def scaled(self, factor: float) -> RetryPolicy:
        """The same schedule on a clock ``factor`` times as fast (every duration times it)."""
        return RetryPolicy(
            base=self.base * factor,
            cap=self.cap * factor,
            max_attempts=self.max_attempts,
            deadline=self.deadline * factor,
            max_retry_after=self.max_retry_after * factor,
        )

    def honoured(self, retry_after: float | None) -> float | None:
        """The part of the hub's ``Retry-After`` (seconds) that is waited out.

        At most ``max_retry_after``; None for none (or for a value that is not a number).
        """
        if retry_after is None or math.isnan(retry_after):
            return None
        return min(max(retry_after, 0.0), self.max_retry_after)

    def bound(self, retry: int) -> float:
        """The upper bound of the jittered wait before retry ``retry`` (0-based)."""
        if retry >= 64:  # 2**64 overflows nothing in Python, but the cap won long before
            return self.cap
        return min(self.cap, self.base * 2.0**retry)

    def next_wait(
        self,
        *,
        attempts: int,
        elapsed: float,
        rng: random.Random,
        retry_after: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        Args:
            attempts: Attempts made so far (at least 1).
            elapsed: Seconds from the first attempt's start to now.
            rng: The random source of the jitter.
            retry_after: The hub's ``Retry-After`` in seconds, if any (honoured up to
                ``max_retry_after``).
        """
        if attempts >= self.max_attempts:
            return None
        wait = rng.uniform(0.0, self.bound(attempts - 1))
        honoured = self.honoured(retry_after)
        if honoured is not None:
            wait = max(wait, honoured)
        if elapsed + wait > self.deadline:
            return None
        return wait

    def schedule(
        self, rng: random.Random, retry_afters: list[float | None] | None = None
    ) -> list[float]:
        """The waits of an operation whose every attempt fails at once (for docs and tests).

        Args:
            rng: The random source of the jitter.
            retry_afters: The hub's ``Retry-After`` after each failed attempt, if any.
        """
        waits: list[float] = []
        elapsed = 0.0
        attempts = 1
        while True:
            retry_after = None
            if retry_afters is not None and attempts - 1 < len(retry_afters):
                retry_after = retry_afters[attempts - 1]
            wait = self.next_wait(
                attempts=attempts, elapsed=elapsed, rng=rng, retry_after=retry_after
            )
            if wait is None:
                return waits
            waits.append(wait)
            elapsed += wait
            attempts += 1


@attrs.frozen
class ChannelPolicies:
    """The retry policy of each kind of request, with the defaults hubfsm ships.

    Attributes:
        first_contact: Opening the session while nothing has ever answered and the
            connection is refused: most likely no hub runs at that address, so a brief
            try, then a clear failure, instead of the control channel's patience.
        control: Reading, creating a model and checking the key: the user waits on these.
        metrics: Metrics uploads; a give-up is cheap since the next send carries the epochs.
        heartbeat: Heartbeats; the next one is 300 s away, so there is no point trying long.
        checkpoint: Epoch weights; large, so a patient schedule.
        final: The final weights; the user waits, and they must arrive.
    """

    control: RetryPolicy = RetryPolicy(base=1.0, cap=8.0, max_attempts=4, deadline=60.0)
    metrics: RetryPolicy = RetryPolicy(base=1.0, cap=30.0, max_attempts=5, deadline=120.0)
    heartbeat: RetryPolicy = RetryPolicy(base=2.0, cap=30.0, max_attempts=3, deadline=120.0)
    checkpoint: RetryPolicy = RetryPolicy(base=2.0, cap=120.0, max_attempts=8, deadline=1800.0)
    final: RetryPolicy = RetryPolicy(base=2.0, cap=60.0, max_attempts=10, deadline=3600.0)
    first_contact: RetryPolicy = RetryPolicy(base=0.5, cap=2.0, max_attempts=4, deadline=5.0)

    def scaled(self, factor: float) -> ChannelPolicies:
        """Every channel's policy on a clock ``factor`` times as fast."""
        return ChannelPolicies(*(p.scaled(factor) for p in attrs.astuple(self, recurse=False)))


@attrs.frozen
class CoreConfig:
    """What the core needs to know beyond the events themselves."""

    limits: Limits = Limits()
    policies: ChannelPolicies = ChannelPolicies()
    #: Where idempotency keys come from: the OS's randomness unless a simulation seeds it.
    nonce: KeySource = os_nonce
    #: The protocol dialect spoken: ``hub`` or ``platform`` (see :mod:`hubfsm.core.platform`).
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
