"""The refusing hub: answers that stop one record, the heartbeats, or all sending.

A seed of the ``refusing`` profile draws one answer that stops all sending mid-run (a
401, a redirect, a deleted or trained model, or none), one epoch whose metrics the hub
refuses with 400, one checkpoint it refuses with 422, and heartbeats refused with 409.
The session keeps what it accepted in an outbox (the same records as a real session, on
an in-memory database); at the end every epoch logged must be on the hub or held there.
Where the cause can be fixed (a new key, the right API root), a sync from the outbox
must then deliver everything but the rejected records.
"""

from __future__ import annotations

import random
from typing import Any

from hubfsm.core.engine import Core, Send
from hubfsm.core.identifier import parse_identifier
from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.errors import AuthError, HubError, ModelNotFoundError, ModelTrainedError
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.inline import Clock, SimRunner
from hubfsm.sim.core_world import CoreWorld
from hubfsm.sim.invariants import Checker
from hubfsm.sim.profiles import Expect, RefusalDraw
from hubfsm.sim.world import LATENCY
from hubfsm.transport import Outcome, Request, Response, Transport

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

#: Virtual seconds a sync after the fix may take.
SYNC_PATIENCE = 7200.0


def _refusal(status: int, message: str) -> Response:
    return Response(status, {"success": False, "message": message, "data": {}})


class RefusingHub(Transport):
    """Answers as the seed's :class:`RefusalDraw` says, else passes the request on.

    Attributes:
        fixed: The cause of the stopping answer is fixed (a new key, the right root).
    """

    def __init__(self, inner: Transport, draw: RefusalDraw, clock: Clock, checker: Checker):
        self.inner = inner
        self.draw = draw
        self.clock = clock
        self.checker = checker
        self.fixed = False
        self._noted: set[str] = set()

    def _note(self, what: str) -> None:
        if what not in self._noted:
            self._noted.add(what)
            self.checker.note(what)

    def send(self, request: Request) -> Response:
        """Refuse what the draw refuses now; send the rest through."""
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
            return self.inner.send(request)
        body = request.json or {}
        bad_epoch = None if draw.bad_epoch is None else str(draw.bad_epoch)
        if body.get("type") == "metrics" and bad_epoch in body.get("metrics", {}):
            return _refusal(400, f"metrics of epoch {draw.bad_epoch} cannot be read")
        fields = request.fields or {}
        if fields.get("type") == "epoch" and fields.get("epoch") == str(draw.bad_checkpoint):
            return _refusal(422, f"weights of epoch {draw.bad_checkpoint} are not a model")
        return self.inner.send(request)


class _Filing:
    """Files the core's changes before each request leaves, then tells the checker."""

    def __init__(self, world: RefusingWorld) -> None:
        self.world = world

    def sent(self, now: float, send: Send) -> None:
        self.world.persist()
        self.world.checker.sent(now, send)

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        self.world.checker.answered(now, send, outcome)
        self.world.persist()


class RefusingWorld(CoreWorld):
    """A :class:`World` whose hub refuses as the seed draws, with a durable outbox."""

    def __init__(self, seed: int, profile: Any, **kwargs: Any) -> None:
        super().__init__(seed, profile, **kwargs)
        draw = self.scenario.refusals or RefusalDraw()
        self.draw = draw
        self._config = kwargs.get("config")
        self._factory = kwargs.get("core_factory", Core)
        self._sync_rng = random.Random(self.rng.getrandbits(64))
        self.refusing = RefusingHub(self.runner.driver.transport, draw, self.clock, self.checker)
        self.db: OutboxDB | None = None
        self._arm(self.core)

    def _arm(self, core: Core) -> None:
        core.durable = True
        driver = Driver(
            core, self.refusing, clock=self.clock, observer=_Filing(self), latency=LATENCY,
            quiet=True,
        )  # fmt: skip
        self.runner = SimRunner(driver)

    def persist(self) -> None:
        """File the core's changes in the outbox, as a real session's worker does."""
        core = self.core
        if self.db is None:
            if core.model_id is None:
                return
            self.db = OutboxDB.in_memory(core.model_id)
        self.db.apply(core.take_changes())

    def accepted(self) -> None:
        """A trainer's call returned: it is durable from now on (the journal's promise)."""
        self.persist()

    def held(self) -> set[int]:
        """The epochs the outbox holds: queued, in a kept operation, or rejected."""
        if self.db is None:
            return set()
        saved = self.db.load()
        epochs = {epoch for epoch, _ in saved.metrics}
        for op in saved.ops:
            if op.channel == "metrics":
                epochs.update(op.payload)
        for record in saved.rejected:
            epochs.update(record.epochs)
        return epochs

    def rejected_epochs(self) -> set[int]:
        """The epochs whose metrics the outbox keeps as rejected."""
        if self.db is None:
            return set()
        return {e for record in self.db.rejected() for e in record.epochs}

    def check_end(self, *, expect: Expect | None = None) -> None:
        """Check the invariants against the outbox, how the session ended, then a sync."""
        self.persist()
        metrics, uploads = self.applied()
        finals = [sha for kind, _, sha in uploads if kind == "final"]
        checker = self.checker
        core = self.core
        checker.finish(
            core,
            logged=self.logged,
            on_hub=self.on_hub(),
            applied=metrics,
            uploads=uploads,
            final_sha256=finals[-1] if finals else None,
            expected_sha256=self.expected_sha,
            secrets=[self.key],
            held=self.held(),
        )
        draw = self.draw
        wanted = STOP_ERRORS.get(draw.stop)
        if wanted is None and core.state != "done":
            checker.violate(1, f"nothing stopped the session, yet it ended {core.state}")
        elif wanted is not None and (core.state != "refused" or type(core.error) is not wanted):
            got = type(core.error).__name__ if core.error else "no error"
            checker.violate(
                6,
                f"a {draw.stop} must stop the session with {wanted.__name__}; "
                f"it ended {core.state} with {got}",
            )
        wrongly = self.rejected_epochs() - {draw.bad_epoch}
        if wrongly:
            checker.violate(1, f"epochs set aside though the hub takes them: {sorted(wrongly)}")
        if expect is not None and draw.stop in (0, 401, 302) and checker.violations == []:
            self.sync_after_fix()

    def sync_after_fix(self) -> None:
        """The cause is fixed: a sync from the outbox delivers all but the rejected."""
        model_id = self.core.model_id
        if model_id is None or self.db is None:
            return
        self.refusing.fixed = True
        checker = self.checker
        checker.restarted("the cause is fixed; hubfsm sync sends what the outbox holds")
        session = self.core
        self.core = core = self._factory(
            self._config,
            rng=random.Random(self._sync_rng.getrandbits(64)),
            on_change=checker.changed,
        )
        self._arm(core)
        saved = self.db.load()
        core.restore(saved, now=self.clock())
        core.open(parse_identifier(model_id), now=self.clock())
        self.runner.run_while(("resolved",), limit=SYNC_PATIENCE)
        if saved.final is not None and core.machine.allows("start"):
            epoch, part, map50_95 = saved.final
            core.start(now=self.clock())
            core.finish(epoch, part, map50_95=map50_95, now=self.clock(), timeout=SYNC_PATIENCE)
            self.runner.run_while(("final_uploading",), limit=SYNC_PATIENCE + 100.0)
        else:
            self.runner.run_until(self.clock() + SYNC_PATIENCE)
        self.persist()
        undelivered = set(self.logged) - self.on_hub() - self.rejected_epochs()
        if undelivered:
            checker.violate(1, f"after the fix, a sync left epochs {sorted(undelivered)[:10]}")
        if self.expected_sha is not None:
            finals = [sha for kind, _, sha in self.applied()[1] if kind == "final"]
            if finals[-1:] != [self.expected_sha]:
                checker.violate(3, "after the fix, a sync did not deliver the final weights")
        if self.db.refusal is not None:
            checker.violate(6, "the outbox still says sending is stopped after a delivery")
        # The run's result is how the trainer's session ended; the sync only checked it.
        self.core = session
