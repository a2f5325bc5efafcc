"""A transport wrapper that injects seeded faults: 5xx, 429, timeouts, lost answers."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

from hubfsm.hub.faults import FaultMix, draw
from hubfsm.transport import Request, Response, Transport, TransportError


class FaultInjectingTransport(Transport):
    """Wraps a transport and makes some requests fail, as drawn from ``mix`` with ``rng``.

    Per request: sleep the drawn latency; then a server error or 429 answers without
    reaching the inner transport; a timeout sleeps ``timeout`` and raises; a connection
    error raises at once; a lost response reaches the inner transport (so it takes effect),
    sleeps ``timeout`` as a client waiting for the answer would, and raises a timeout.

    Args:
        inner: The transport that really sends.
        rng: The random source; a seeded one makes the fault sequence repeatable.
        mix: How often each fault happens.
        sleep: Waits that many seconds (a simulation passes its virtual clock's advance).
        timeout: Seconds a timed-out request waits before failing.

    Attributes:
        injected: How many faults of each kind were injected.
        requests: How many requests went through the wrapper.
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
        self.inner = inner
        self.rng = rng
        self.mix = mix
        self.timeout = timeout
        self._sleep = sleep
        self.injected: Counter[str] = Counter()
        self.requests = 0

    def __repr__(self) -> str:
        return f"FaultInjectingTransport(inner={self.inner!r}, mix={self.mix!r})"

    def send(self, request: Request) -> Response:
        """Send ``request`` through the inner transport, unless a fault is drawn."""
        self.requests += 1
        fault = draw(self.mix, self.rng)
        if fault.latency > 0.0:
            self._sleep(fault.latency)
        kind = fault.kind
        if kind == "none":
            return self.inner.send(request)
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
            self.inner.send(request)
        self._sleep(self.timeout)
        verb = "answer lost" if kind == "lost_response" else "no answer"
        raise TransportError("timeout", f"{where}: {verb} within {self.timeout:g} s (injected)")

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()
