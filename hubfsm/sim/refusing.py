"""The refusing hub: answers that stop one record, the heartbeats, or all sending.

A seed of the ``refusing`` profile draws one answer that stops all sending mid-run (a
401, a redirect, a deleted or trained model, or none), one epoch whose metrics the hub
refuses with 400, one checkpoint it refuses with 422, and heartbeats refused with 409.
The trainer talks to real sessions, as every other profile's does (see
:class:`~hubfsm.sim.refusing_world.RefusingWorld`): the factory's composition on the
inline shell, with the real journal and outbox. At the end every epoch logged must be on
the hub or held in the outbox the session left, and ``finish`` (or ``close``) must have
raised the refusal. Where the cause can be fixed (a new key, the right API root), the
real ``hubfsm sync`` must then deliver everything but the rejected records.
"""

from __future__ import annotations

from hubfsm.errors import AuthError, HubError, ModelNotFoundError, ModelTrainedError
from hubfsm.runtime.clocks import Clock
from hubfsm.sim.invariants import Checker
from hubfsm.sim.profile_types import RefusalDraw
from hubfsm.transport import Handler, Request, Response

#: The error each stopping answer must end the session with.
STOP_ERRORS: dict[int, type[HubError]] = {
    401: AuthError,
    302: HubError,
    404: ModelNotFoundError,
    409: ModelTrainedError,
}

_STOP_MESSAGES = {
    401: "invalid or revoked API key",
    302: "moved",
    404: "model not found",
    409: "model is already trained",
}


def _refusal(status: int, message: str) -> Response:
    return Response(status, {"success": False, "message": message, "data": {}})


class RefusingHub:
    """Wraps a handler: answers as the seed's :class:`RefusalDraw` says, else hands it on.

    Attributes:
        fixed: The cause of the stopping answer is fixed (a new key, the right root).
    """

    def __init__(self, handler: Handler, draw: RefusalDraw, clock: Clock, checker: Checker):
        self.handler = handler
        self.draw = draw
        self.clock = clock
        self.checker = checker
        self.fixed = False
        self._noted: set[str] = set()

    def _note(self, what: str) -> None:
        if what not in self._noted:
            self._noted.add(what)
            self.checker.note(what)

    def __call__(self, request: Request) -> Response:
        """Refuse what the draw refuses now; hand the rest on."""
        draw = self.draw
        now = self.clock()
        stop_at = draw.stop_at
        stopped = draw.stop and not self.fixed and stop_at is not None and now >= stop_at
        if stopped and request.method == "POST":
            self._note(f"the hub answers every upload {draw.stop}")
            return _refusal(draw.stop, _STOP_MESSAGES[draw.stop])
        if "/heartbeat/" in request.path:
            if draw.heartbeat_at is not None and now >= draw.heartbeat_at:
                self._note("the hub refuses heartbeats with 409")
                return _refusal(409, "agent conflict")
            return self.handler(request)
        body = request.json or {}
        bad_epoch = None if draw.bad_epoch is None else str(draw.bad_epoch)
        if body.get("type") == "metrics" and bad_epoch in body.get("metrics", {}):
            return _refusal(400, f"metrics of epoch {draw.bad_epoch} cannot be read")
        data = body.get("data")
        # The Platform dialect's epoch: one per request, its number in the data.
        if (
            body.get("event") == "epoch_end"
            and isinstance(data, dict)
            and draw.bad_epoch is not None
            and data.get("epoch") == draw.bad_epoch
        ):
            return _refusal(400, f"metrics of epoch {draw.bad_epoch} cannot be read")
        fields = request.fields or {}
        if fields.get("type") == "epoch" and fields.get("epoch") == str(draw.bad_checkpoint):
            return _refusal(422, f"weights of epoch {draw.bad_checkpoint} are not a model")
        return self.handler(request)
