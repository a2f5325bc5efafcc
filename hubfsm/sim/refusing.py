"""The refusing hub and its world: answers that stop one record, the heartbeats, or all sending.

A seed of the ``refusing`` profile draws one answer that stops all sending mid-run (a
401, a redirect, a deleted or trained model, or none), one epoch whose metrics the hub
refuses with 400, one checkpoint it refuses with 422, and heartbeats refused with 409.
:class:`RefusingHub` answers them in front of the hub; the trainer talks to real
sessions, as every other profile's does (see :class:`RefusingWorld`): the factory's
composition on the inline shell, with the real journal and outbox. At the end every
epoch logged must be on the hub or held in the outbox the session left, and ``finish``
(or ``close``) must have raised the refusal. Where the cause can be fixed (a new key,
the right API root), the real ``hubfsm sync`` must then deliver everything but the
rejected records.
"""

from __future__ import annotations

from hubfsm.core.values import Saved
from hubfsm.errors import (
    AuthError,
    HubError,
    HubfsmError,
    ModelNotFoundError,
    ModelTrainedError,
)
from hubfsm.runtime.driver import Clock
from hubfsm.sim.ends import applied, check_hub, on_hub, outbox_now, sync_outboxes
from hubfsm.sim.invariants import Checker
from hubfsm.sim.scenario import Expect, RefusalDraw
from hubfsm.sim.world import World
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


class RefusingWorld(World):
    """A :class:`World` whose hub refuses as the seed draws.

    Takes the arguments of :class:`World`. Every request of the run's sessions (and of
    the sync after the fix) goes through a :class:`RefusingHub` first.
    """

    def _front(self, handler: Handler) -> Handler:
        """The refusing hub, answering before ``handler`` as the seed draws."""
        self.draw = draw = self.scenario.refusals or RefusalDraw()
        self.refusing = RefusingHub(handler, draw, self.clock, self.checker)
        return self.refusing

    # -- the trainer hears of the refusal --------------------------------------------

    def wrap_up(self) -> None:
        """Close the trainer's session; a refusal ``finish`` did not raise is raised here."""
        if self.session is not None:
            try:
                self.session.close(timeout=0.0)
            except HubfsmError as exc:
                self.raised = exc

    # -- what the outbox holds ------------------------------------------------------

    def saved(self) -> Saved | None:
        """What the run's outbox holds now, or None when there is none (nothing left)."""
        held = outbox_now(self)
        return None if held is None else held[0]

    def held(self) -> set[int]:
        """The epochs the outbox holds: queued, in a kept operation, or rejected."""
        saved = self.saved()
        if saved is None:
            return set()
        epochs = {epoch for epoch, _ in saved.metrics}
        for op in saved.ops:
            if op.channel == "metrics":
                epochs.update(op.payload)
        for record in saved.rejected:
            epochs.update(record.epochs)
        return epochs

    def rejected_epochs(self) -> set[int]:
        """The epochs whose metrics the outbox keeps as rejected."""
        saved = self.saved()
        return set() if saved is None else {e for r in saved.rejected for e in r.epochs}

    # -- the end --------------------------------------------------------------------

    def check_end(self, *, expect: Expect | None = None) -> None:
        """Check the invariants against the outbox, how the session ended, then a sync."""
        checker = self.checker
        core = self.core
        check_hub(self, texts=[str(self.raised or "")], held=self.held())
        draw = self.draw
        wanted = STOP_ERRORS.get(draw.stop)
        if draw.stop == 404 and checker.failed_opening and core.model_id is None:
            wanted = HubError  # a 404 to making a model names none: the root is wrong
        # The Platform dialect retries a 409, as the Platform SDK does: it is an outage
        # that outlasts finish's patience, and everything stays kept for a sync.
        outage = self.protocol == "platform" and draw.stop == 409
        if outage:
            # A 409 that outlasts the opening's patience leaves the session unopened,
            # with nothing accepted, and the trainer told at the open.
            unopened = core.machine.traits.opening and self.raised is not None
            if core.state not in ("done", "resumable") and not unopened:
                checker.violate(1, f"a 409 is retried on Platform; the session ended {core.state}")
        elif wanted is None and core.state != "done":
            checker.violate(1, f"nothing stopped the session, yet it ended {core.state}")
        elif wanted is not None and (
            # A refused opening fails the session: nothing was accepted yet.
            core.state != ("failed" if checker.failed_opening else "refused")
            or type(core.error) is not wanted
        ):
            got = type(core.error).__name__ if core.error else "no error"
            checker.violate(
                6,
                f"a {draw.stop} must stop the session with {wanted.__name__}; "
                f"it ended {core.state} with {got}",
            )
        elif wanted is not None and expect is not None and type(self.raised) is not wanted:
            # The trainer must hear of it: finish (or close) raises, naming the answer.
            got = type(self.raised).__name__ if self.raised else "nothing"
            checker.violate(6, f"a {draw.stop} must be raised as {wanted.__name__}; got {got}")
        wrongly = self.rejected_epochs() - {draw.bad_epoch}
        if wrongly:
            checker.violate(1, f"epochs set aside though the hub takes them: {sorted(wrongly)}")
        fixable = (0, 401, 302, 409) if outage else (0, 401, 302)
        if expect is not None and draw.stop in fixable and checker.violations == []:
            self.sync_after_fix()

    def sync_after_fix(self) -> None:
        """The cause is fixed: ``hubfsm sync`` delivers all but the rejected records."""
        if self.model_id is None:
            return
        self.refusing.fixed = True
        checker = self.checker
        checker.restarted("the cause is fixed; hubfsm sync sends what the outbox holds")
        trainers = self.core
        try:
            sync_outboxes(self)
        finally:
            # The run's result is how the trainer's session ended; the sync only checked it.
            self.core = trainers
        undelivered = set(self.logged) - on_hub(self) - self.rejected_epochs()
        if undelivered:
            checker.violate(1, f"after the fix, a sync left epochs {sorted(undelivered)[:10]}")
        if self.expected_sha is not None:
            finals = [sha for kind, _, sha in applied(self)[1] if kind == "final"]
            if finals[-1:] != [self.expected_sha]:
                checker.violate(3, "after the fix, a sync did not deliver the final weights")
        saved = self.saved()
        if saved is not None and saved.refusal is not None:
            checker.violate(6, "the outbox still says sending is stopped after a delivery")
