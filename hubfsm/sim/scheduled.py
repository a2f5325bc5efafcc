"""A profile's scenario (fault windows, a revoked key) applied as virtual time passes."""

from __future__ import annotations

from collections.abc import Callable

from hubfsm.runtime.clocks import Clock
from hubfsm.sim.profile_table import mix_text
from hubfsm.sim.profile_types import Scenario, Window
from hubfsm.transport import Request, Response
from transports.faults import Faults


class ScheduledFaults:
    """Wraps the seeded faults' handler to apply a :class:`~hubfsm.sim.profile_types.Scenario`.

    Before each request it sets the faults' mix to the window in force (only when the
    window changes, so anyone else's change of mix lasts until the next boundary), and
    revokes the key once its time has come, both as virtual time passes; both are noted
    in the trace. Then the faults answer.
    """

    def __init__(
        self,
        faults: Faults,
        scenario: Scenario,
        clock: Clock,
        *,
        revoke: Callable[[], None],
        note: Callable[[str], None],
    ) -> None:
        self.faults = faults
        self.scenario = scenario
        self.clock = clock
        self._revoke = revoke
        self._note = note
        self._window: Window | None = None
        self._revoked = False

    def __call__(self, request: Request) -> Response:
        """Bring the scenario up to now, then hand ``request`` to the faults."""
        now = self.clock()
        window = self.scenario.schedule.at(now)
        if window is not self._window:
            if self._window is not None:
                self._note(f"{self._window.label} ends")
            if window is None:
                self.faults.mix = self.scenario.schedule.base
            else:
                self._note(f"{window.label} begins: {mix_text(window.mix)}")
                self.faults.mix = window.mix
            self._window = window
        revoke_at = self.scenario.revoke_at
        if not self._revoked and revoke_at is not None and now >= revoke_at:
            self._revoked = True
            self._revoke()
            self._note("the API key is revoked")
        return self.faults(request)
