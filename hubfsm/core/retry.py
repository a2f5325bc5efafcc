"""The retry policy: which outcomes to retry, and how long to wait before each retry.

Pure: the clock and the random source come in as arguments, so a seed fixes the schedule.
"""

from __future__ import annotations

import enum
import math
import random

import attrs

from hubfsm.core.machine import Answer, answer_to
from hubfsm.transport import Outcome, Response, TransportError


class Verdict(enum.Enum):
    """What an outcome means for the operation that produced it."""

    SUCCESS = "success"
    RETRY = "retry"
    FATAL = "fatal"


#: Transport errors that, before the hub has ever answered, mean the address is wrong
#: rather than the hub busy: waiting will not fix them.
FIRST_CONTACT_FATAL = frozenset({"tls", "url"})


def classify(outcome: Outcome, *, first_contact: bool = False) -> Verdict:
    """Sort an outcome into success, retryable failure or fatal failure.

    Connection errors, timeouts, garbled answers and the statuses the machine's answer
    table retries (:data:`hubfsm.core.machine.ANSWERS`) are retryable; every other
    non-2xx status is fatal.

    Args:
        outcome: The response or transport error.
        first_contact: True when the hub has never answered this session yet: a TLS
            failure or a URL that cannot be requested is then a configuration error
            (https against a plain http hub, a typo in the port), fatal at once.
    """
    if isinstance(outcome, TransportError):
        if first_contact and outcome.kind in FIRST_CONTACT_FATAL:
            return Verdict.FATAL
        return Verdict.RETRY
    if outcome.ok:
        return Verdict.SUCCESS
    if answer_to(outcome.status) is Answer.RETRY:
        return Verdict.RETRY
    return Verdict.FATAL


def retry_after_of(outcome: Outcome) -> float | None:
    """The hub's ``Retry-After`` in seconds, if the outcome carries one."""
    return outcome.retry_after if isinstance(outcome, Response) else None


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
