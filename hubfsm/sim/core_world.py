"""A world that drives the core alone, for the refusing profile (not yet on sessions).

The refusing hub's profile (:mod:`hubfsm.sim.refusing`) was written against the core:
it files the core's changes itself. It runs the same driver as sessions do, on the
inline shell, but not the session, journal and outbox around it; every other profile
runs real sessions (:class:`~hubfsm.sim.world.World`).
"""

from __future__ import annotations

import hashlib
import random

import attrs

from hubfsm.core import protocol
from hubfsm.core.engine import Core, CoreConfig, Limits
from hubfsm.hub.domain import Hub
from hubfsm.hub.store_memory import MemoryStore
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.inline import SimRunner, VirtualClock
from hubfsm.sim.invariants import Checker
from hubfsm.sim.profiles import Profile
from hubfsm.sim.world import (
    EPOCH_ZERO,
    LATENCY,
    TIMEOUT,
    CoreFactory,
    ScheduledFaults,
    Stage,
    _token,
)
from hubfsm.transport import FilePart, Transport
from transports.faults import FaultInjectingTransport
from transports.memory import InMemoryTransport


class CoreWorld(Stage):
    """One simulated session and everything around it: in-memory hub, virtual clock, faults.

    Args:
        seed: Fixes every random choice.
        profile: The faults, the windows and the trainer's pace.
        epochs: The epochs the trainer will run (fault windows fall within them).
        config: The core's limits and policies.
        check_limits: The limits the checker holds the core to; by default the core's own.
        core_factory: Makes the core, called like :class:`Core`.
    """

    def __init__(
        self,
        seed: int,
        profile: Profile,
        *,
        epochs: int = 50,
        config: CoreConfig | None = None,
        check_limits: Limits | None = None,
        core_factory: CoreFactory = Core,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.rng = rng = random.Random(seed)
        self.clock = VirtualClock(EPOCH_ZERO)
        # Inside the simulated world even the idempotency keys follow the seed.
        config = attrs.evolve(config or CoreConfig(), nonce=protocol.seeded_nonce)
        self.core_config = config
        limits = check_limits or config.limits
        self.key = _token(rng, 42)
        self.hub = Hub(MemoryStore(), self.clock, seed=rng.getrandbits(32), keys=[self.key])
        self.files: dict[str, bytes] = {}
        self.checker = Checker(
            self.clock,
            metrics=limits.metrics,
            checkpoint=limits.checkpoint,
            heartbeat=limits.heartbeat,
            heartbeat_slack=TIMEOUT + profile.max_latency + 0.1,
            origin=EPOCH_ZERO,
        )
        self.core = core_factory(
            config, rng=random.Random(rng.getrandbits(64)), on_change=self.checker.changed
        )
        self.transport = FaultInjectingTransport(
            InMemoryTransport(self.hub, self.key, read_file=self.files.__getitem__),
            random.Random(rng.getrandbits(64)),
            profile.faults,
            sleep=self.clock.sleep,
            timeout=TIMEOUT,
        )
        self.scenario = profile.draw(
            random.Random(rng.getrandbits(64)), start=EPOCH_ZERO, epochs=epochs
        )
        outer: Transport = self.transport
        if self.scenario.schedule.windows or self.scenario.revoke_at is not None:
            outer = ScheduledFaults(
                self.transport,
                self.scenario,
                self.clock,
                revoke=lambda: self.hub.revoke_key(self.key),
                note=self.checker.note,
            )
        self.runner = SimRunner(
            Driver(self.core, outer, clock=self.clock, observer=self.checker, latency=LATENCY,
                   quiet=True)
        )  # fmt: skip
        self.logged = []
        self.expected_sha = None

    def _file(self, path: str, name: str, content: bytes) -> FilePart:
        """Keep a weights file where the transport reads it from."""
        self.files[path] = content
        return FilePart(name, path, len(content), hashlib.sha256(content).hexdigest())

    def _existing_model(self) -> str:
        """Create a model on the hub behind the session's back, and return its id."""
        created = InMemoryTransport(self.hub, self.key).send(
            protocol.create_model(protocol.create_payload("yolov8n.yaml", {"data": "coco8"}))
        )
        return str(created.data["id"])

    def hub_now(self) -> Hub:
        """The hub as it is now."""
        return self.hub
