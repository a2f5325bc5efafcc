"""Bugs a test plants in the client's layers, to show the simulator finds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from hubfsm.core.dialect import PLATFORM
from hubfsm.core.engine import Core
from hubfsm.runtime.driver import Driver
from hubfsm.sim.stage import CoreFactory


@attrs.frozen
class Bugs:
    """Bugs planted in the client's layers, so tests can show the simulator finds them.

    Attributes:
        core_factory: Makes the core, called like :class:`Core`.
        driver_factory: Makes the driver, called like :class:`Driver`.
        sync_recover: The recovery ``hubfsm sync``'s sessions run, instead of the real one.
        nonce_from_seed: Sessions take their idempotency keys' nonce from the user's seed
            (the same in every process) instead of from fresh randomness.
    """

    core_factory: CoreFactory = Core
    driver_factory: Callable[..., Driver] = Driver
    sync_recover: Callable[..., Any] | None = None
    nonce_from_seed: bool = False


#: No bug planted: the client as it ships.
NO_BUGS = Bugs()


class CompleteBeforeLastEpoch(Core):
    """The official Platform client's order: ``training_complete`` does not wait for epochs.

    Its ``on_train_end`` waits only for a checkpoint in flight, while the last
    ``epoch_end`` may still be on its thread pool. Here the real scheduler runs with its
    final-upload gate blind to the metrics channel: the final upload (whose last step is
    ``training_complete``) starts beside epochs not yet acknowledged.
    """

    def _schedule(self, state: str, now: float) -> None:
        ops = self._ops
        if not (state == "final_uploading" and self.dialect is PLATFORM and ops["final"] is None):
            super()._schedule(state, now)
            return
        # Let the metrics be scheduled first, then hide them from the final's gate only.
        super()._schedule(state, now)
        held = ops["metrics"], self._unsent, self._solo
        ops["metrics"], self._unsent, self._solo = None, {}, {}
        try:
            super()._schedule(state, now)
        finally:
            ops["metrics"] = held[0]
            self._unsent = {**held[1], **self._unsent}
            self._solo = {**held[2], **self._solo}


#: The Platform-only bug: ``training_complete`` may go before the last epoch is acknowledged.
COMPLETE_BEFORE_LAST_EPOCH = Bugs(core_factory=CompleteBeforeLastEpoch)
