"""The crash fault: the simulated process dies, mid-request or between two trainer calls.

The dying process may have sent a request that took effect; its answer is lost with
it. What survives is what a real process leaves behind: the outbox and the journal
(real files under the run's scratch directory) and the trainer's own progress, as a
real trainer resuming from its checkpoint would have it. The world then composes a new
session on them (see :class:`~hubfsm.sim.world.World`).
"""

from __future__ import annotations

from hubfsm.transport import Handler, Request, Response, TransportError

#: Virtual seconds a dead process takes to come back.
RESTART_SECONDS = (5.0, 120.0)


class Crash(BaseException):
    """The simulated process dies (a BaseException: no layer of the client may survive it)."""


class Dying:
    """Wraps a handler: the process dies right after its n-th request left (it may land).

    Args:
        handler: Answers each request first.
        deaths: The fatal request numbers (counted from 1); the trainer may empty the set
            to die no more.
    """

    def __init__(self, handler: Handler, deaths: set[int]) -> None:
        self.handler = handler
        self.deaths = deaths
        self.sent = 0

    def __call__(self, request: Request) -> Response:
        """Hand ``request`` on, then die if this was a fatal request number."""
        self.sent += 1
        try:
            response = self.handler(request)
        except TransportError:
            if self.sent in self.deaths:
                raise Crash(f"the process dies during request {self.sent}") from None
            raise
        if self.sent in self.deaths:
            raise Crash(f"the process dies during request {self.sent}")
        return response
