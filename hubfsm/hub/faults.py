"""Seeded fault drawing, shared by the fault-injecting transport and the hub server.

Pure: :func:`draw` takes the random source as an argument, so one seed gives one sequence
of faults, whoever applies them.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import attrs

FaultKind = Literal[
    "none", "server_error", "rate_limited", "timeout", "connection_error", "lost_response"
]

#: The kinds that fail a request, in the order :func:`draw` tries them.
FAULT_KINDS: tuple[FaultKind, ...] = (
    "server_error",
    "rate_limited",
    "timeout",
    "connection_error",
    "lost_response",
)


def _probability(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], not {value}")


def _span(instance: Any, attribute: attrs.Attribute[tuple[float, float]], value: Any) -> None:
    lo, hi = value
    if not 0.0 <= lo <= hi or not math.isfinite(hi):
        raise ValueError(f"{attribute.name} must be (lo, hi) with 0 <= lo <= hi, not {value}")


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = value
    return float(lo), float(hi)


@attrs.frozen
class FaultMix:
    """How often each fault happens, per request.

    Attributes:
        server_error: Probability of a 5xx answer (one of ``server_statuses``).
        rate_limited: Probability of a 429 with a ``Retry-After`` drawn from ``retry_after``.
        timeout: Probability that the request hangs until the client gives up; not applied.
        connection_error: Probability that the connection fails; not applied.
        lost_response: Probability that the request is applied but its answer is lost.
        latency: ``(lo, hi)`` seconds added to every request, drawn uniformly.
        retry_after: ``(lo, hi)`` seconds of a 429's ``Retry-After``, drawn uniformly.
        server_statuses: The statuses a server error picks from, uniformly.
    """

    server_error: float = attrs.field(default=0.0, validator=_probability)
    rate_limited: float = attrs.field(default=0.0, validator=_probability)
    timeout: float = attrs.field(default=0.0, validator=_probability)
    connection_error: float = attrs.field(default=0.0, validator=_probability)
    lost_response: float = attrs.field(default=0.0, validator=_probability)
    latency: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_pair, validator=_span)
    retry_after: tuple[float, float] = attrs.field(
        default=(1.0, 10.0), converter=_pair, validator=_span
    )
    server_statuses: tuple[int, ...] = attrs.field(
        default=(500, 502, 503, 504), converter=tuple, validator=attrs.validators.min_len(1)
    )

    def __attrs_post_init__(self) -> None:
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities add up to {self.total:g}, more than 1")

    @property
    def total(self) -> float:
        """The probability that a request fails in some way."""
        return (
            self.server_error
            + self.rate_limited
            + self.timeout
            + self.connection_error
            + self.lost_response
        )

    @property
    def quiet(self) -> bool:
        """True when the mix injects nothing at all, not even latency."""
        return self.total == 0.0 and self.latency[1] == 0.0

    @classmethod
    def from_rate(cls, rate: float, *, latency: float = 0.0) -> FaultMix:
        """A mix failing ``rate`` of requests: 40% 5xx, 30% 429, 10% refused, 20% lost answers.

        No hanging timeouts: they stall a server thread for nothing a dropped connection
        does not test already. ``latency`` is the upper bound of the added delay.
        """
        return cls(
            server_error=0.4 * rate,
            rate_limited=0.3 * rate,
            connection_error=0.1 * rate,
            lost_response=0.2 * rate,
            latency=(0.0, latency),
        )


@attrs.frozen
class Fault:
    """What to do to one request.

    Attributes:
        kind: The fault, or ``none``.
        status: The HTTP status to answer with (server errors and 429s), else None.
        retry_after: Seconds of ``Retry-After`` (429s), else None.
        latency: Seconds to delay the request first.
    """

    kind: FaultKind = "none"
    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0


NO_FAULT = Fault()


def draw(mix: FaultMix, rng: random.Random) -> Fault:
    """Draw the fault of one request; the same ``rng`` state gives the same fault.

    Draws nothing from ``rng`` when the mix is quiet.
    """
    lo, hi = mix.latency
    # mix.quiet, latency first: it is the cheaper half, and draw runs for every request.
    if hi == 0.0 and mix.total == 0.0:
        return NO_FAULT
    latency = rng.uniform(lo, hi) if hi > 0.0 else 0.0
    roll = rng.random()
    if roll < mix.server_error:
        return Fault("server_error", status=rng.choice(mix.server_statuses), latency=latency)
    roll -= mix.server_error
    if roll < mix.rate_limited:
        wait = rng.uniform(*mix.retry_after)
        return Fault("rate_limited", status=429, retry_after=wait, latency=latency)
    roll -= mix.rate_limited
    if roll < mix.timeout:
        return Fault("timeout", latency=latency)
    roll -= mix.timeout
    if roll < mix.connection_error:
        return Fault("connection_error", latency=latency)
    roll -= mix.connection_error
    if roll < mix.lost_response:
        return Fault("lost_response", latency=latency)
    return NO_FAULT if latency == 0.0 else Fault(latency=latency)
