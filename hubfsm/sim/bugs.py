"""Bugs a test plants in the client's layers, to show the simulator finds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

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
