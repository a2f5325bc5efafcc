"""The world of the ``refusing`` profile: a hub that refuses as the seed draws.

The refusals themselves are answered by :class:`~hubfsm.sim.refusing.RefusingHub`; this
world checks what they must leave: every epoch logged on the hub or held in the outbox,
the refusal raised to the trainer, and, where the cause can be fixed, a ``hubfsm sync``
that delivers everything but the rejected records.
"""

from __future__ import annotations

from typing import Any

from hubfsm.core.values import Saved
from hubfsm.errors import HubfsmError
from hubfsm.sim.deaths import sync_outboxes
from hubfsm.sim.end_checks import applied, check_hub, on_hub, outbox_now
from hubfsm.sim.profile_types import Expect, Profile, RefusalDraw
from hubfsm.sim.refusing import STOP_ERRORS, RefusingHub
from hubfsm.sim.world import World


class RefusingWorld(World):
    """A :class:`World` whose hub refuses as the seed draws.

    Takes the arguments of :class:`World`. Every request of the run's sessions (and of
    the sync after the fix) goes through a :class:`RefusingHub`.
    """

    def __init__(self, seed: int, profile: Profile, **kwargs: Any) -> None:
        super().__init__(seed, profile, **kwargs)
        self.draw = draw = self.scenario.refusals or RefusalDraw()
        self.refusing = RefusingHub(self.link, draw, self.clock, self.checker)
        self.link = self.refusing

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
        # The Platform dialect retries a 409, as the Platform SDK does: it is an outage
        # that outlasts finish's patience, and everything stays kept for a sync.
        outage = self.protocol == "platform" and draw.stop == 409
        if outage:
            if core.state not in ("done", "resumable"):
                checker.violate(1, f"a 409 is retried on Platform; the session ended {core.state}")
        elif wanted is None and core.state != "done":
            checker.violate(1, f"nothing stopped the session, yet it ended {core.state}")
        elif wanted is not None and (core.state != "refused" or type(core.error) is not wanted):
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
