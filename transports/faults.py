"""Seeded faults: what to inject (:class:`FaultMix`, :func:`draw`) and a handler wrapper.

One seed gives one sequence of faults, whoever applies them: :class:`Faults` wraps a
handler (a fake hub, a transport's ``send``), :class:`FaultInjectingTransport` wraps a
transport, and the local hub server draws the same faults for the requests it serves.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import attrs

from hubfsm.transport import Handler, Request, Response, Transport, TransportError

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
    # What rng.uniform(lo, hi) computes, the same float, without its Python frame.
    latency = lo + (hi - lo) * rng.random() if hi > 0.0 else 0.0
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


class Faults:
    """Wraps a handler and makes some requests fail, as drawn from ``mix`` with ``rng``.

    Per request: sleep the drawn latency; then a server error or 429 answers without
    reaching the handler; a timeout sleeps ``timeout`` and raises; a connection error
    raises at once; a lost response reaches the handler (so it takes effect), sleeps
    ``timeout`` as a client waiting for the answer would, and raises a timeout.

    Args:
        handler: Answers the requests that get through.
        rng: The random source; a seeded one makes the fault sequence repeatable.
        mix: How often each fault happens; may be changed between requests.
        sleep: Waits that many seconds (a simulation passes its virtual clock's advance).
        timeout: Seconds a timed-out request waits before failing.

    Attributes:
        injected: How many faults of each kind were injected.
        requests: How many requests went through the wrapper.
    """

    def __init__(
        self,
        handler: Handler,
        rng: random.Random,
        mix: FaultMix,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 30.0,
    ) -> None:
        self.handler = handler
        self.rng = rng
        self.mix = mix
        self.timeout = timeout
        self._sleep = sleep
        self.injected: Counter[str] = Counter()
        self.requests = 0

    def __repr__(self) -> str:
        return f"Faults({self.handler!r}, mix={self.mix!r})"

    def __call__(self, request: Request) -> Response:
        """Answer ``request`` with the handler, unless a fault is drawn."""
        self.requests += 1
        fault = draw(self.mix, self.rng)
        if fault.latency > 0.0:
            self._sleep(fault.latency)
        kind = fault.kind
        if kind == "none":
            return self.handler(request)
        self.injected[kind] += 1
        where = f"{request.method} {request.path}"
        if kind == "server_error":
            message = f"injected server error {fault.status}"
            body = {"success": False, "message": message, "data": {}}
            return Response(fault.status or 500, body)
        if kind == "rate_limited":
            body = {"success": False, "message": "injected rate limit", "data": {}}
            return Response(429, body, retry_after=fault.retry_after)
        if kind == "connection_error":
            raise TransportError("connect", f"{where}: connection refused (injected)")
        if kind == "lost_response":
            self.handler(request)
        self._sleep(self.timeout)
        verb = "answer lost" if kind == "lost_response" else "no answer"
        raise TransportError("timeout", f"{where}: {verb} within {self.timeout:g} s (injected)")


class FaultInjectingTransport(Faults, Transport):
    """:class:`Faults` around a transport: its ``send`` is the wrapped handler.

    Args:
        inner: The transport that really sends (and that :meth:`close` closes).
        rng: The random source; a seeded one makes the fault sequence repeatable.
        mix: How often each fault happens; may be changed between requests.
        sleep: Waits that many seconds (a simulation passes its virtual clock's advance).
        timeout: Seconds a timed-out request waits before failing.
    """

    def __init__(
        self,
        inner: Transport,
        rng: random.Random,
        mix: FaultMix,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(inner.send, rng, mix, sleep=sleep, timeout=timeout)
        self.inner = inner

    def __repr__(self) -> str:
        return f"FaultInjectingTransport(inner={self.inner!r}, mix={self.mix!r})"

    def send(self, request: Request) -> Response:
        """Send ``request`` through the inner transport, unless a fault is drawn."""
        return self(request)

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()
