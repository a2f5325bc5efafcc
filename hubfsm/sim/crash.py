"""The crash fault: the simulated process dies mid-request and restarts from its outbox.

The dying process may have sent a request that took effect; its answer is lost with
it. The new process has only what the outbox kept (the same record-keeping as a real
session, on an in-memory database) and the trainer's own progress, as a real trainer
resuming from its checkpoint would.
"""

from __future__ import annotations

import random
from typing import Any

from hubfsm.core.changes import Saved
from hubfsm.core.engine import Core, Send
from hubfsm.core.identifier import parse_identifier
from hubfsm.durable.outbox_db import OutboxDB
from hubfsm.runtime.inline import SimRunner
from hubfsm.sim.invariants import CRASH, Checker
from hubfsm.sim.profiles import Expect
from hubfsm.sim.world import World
from hubfsm.transport import Outcome, Request, Response, Transport, TransportError

#: Virtual seconds a dead process takes to come back.
RESTART_SECONDS = (5.0, 120.0)


class Crash(Exception):
    """The simulated process dies."""


class DyingTransport(Transport):
    """Lets the process die right after its n-th request left (the request may land)."""

    def __init__(self, inner: Transport, deaths: set[int]) -> None:
        self.inner = inner
        self.deaths = deaths
        self.sent = 0

    def send(self, request: Request) -> Response:
        """Send, then die if this was a fatal request number."""
        self.sent += 1
        try:
            response = self.inner.send(request)
        except TransportError:
            if self.sent in self.deaths:
                raise Crash(f"the process dies during request {self.sent}") from None
            raise
        if self.sent in self.deaths:
            raise Crash(f"the process dies during request {self.sent}")
        return response


class _Persisting:
    """Files the core's changes before each request leaves, then tells the checker."""

    def __init__(self, world: CrashWorld, checker: Checker) -> None:
        self.world = world
        self.checker = checker

    def sent(self, now: float, send: Send) -> None:
        self.world.persist()
        self.checker.sent(now, send)

    def answered(self, now: float, send: Send, outcome: Outcome) -> None:
        self.checker.answered(now, send, outcome)


class CrashWorld(World):
    """A :class:`World` whose process dies at drawn requests and restarts from its outbox."""

    def __init__(self, seed: int, profile: Any, **kwargs: Any) -> None:
        super().__init__(seed, profile, **kwargs)
        epochs = kwargs.get("epochs", 50)
        rng = random.Random(self.rng.getrandbits(64))
        lo, hi = profile.crashes
        # Requests run at about two per epoch: deaths fall in the first half or so.
        self.deaths = {rng.randint(1, max(2, epochs)) for _ in range(rng.randint(lo, hi))}
        self.dying = DyingTransport(self.runner.transport, self.deaths)
        self._config = self.core_config
        self._factory = kwargs.get("core_factory", Core)
        self._restart_rng = rng
        self.db: OutboxDB | None = None
        self.model_id: str | None = None
        self.restarts = 0
        self.finishing = False
        self._arm(self.core)

    def _arm(self, core: Core) -> None:
        core.durable = True
        self.runner = SimRunner(
            core, self.dying, self.clock, observer=_Persisting(self, self.checker)
        )

    def persist(self) -> None:
        """File the core's changes in the outbox, as a real session's worker does."""
        core = self.core
        if self.db is None:
            if core.model_id is None:
                return
            self.model_id = core.model_id
            self.db = OutboxDB.in_memory(core.model_id)
        self.db.apply(core.take_changes())

    def accepted(self) -> None:
        """A trainer's call returned: it is durable from now on (the journal's promise)."""
        self.persist()

    def restart(self) -> None:
        """The process died: a new core and runner, with only the outbox to go on."""
        self.restarts += 1
        model_id = self.core.model_id or self.model_id
        self.checker.restarted()
        self.clock.sleep(self._restart_rng.uniform(*RESTART_SECONDS))
        self.core = self._factory(
            self._config,
            rng=random.Random(self._restart_rng.getrandbits(64)),
            on_change=self.checker.changed,
        )
        self._arm(self.core)
        self.model_id = model_id
        saved = self.db.load() if self.db is not None else Saved()
        self.core.restore(saved, now=self.clock())

    def reopen(self, *, create: bool, patience: float) -> None:
        """Open the session again: the same model if the hub gave one, else a new one."""
        if self.model_id is None:
            self.open(create=create, timeout=patience)
            return
        self.core.open(parse_identifier(self.model_id), now=self.clock())
        self.runner.run_while(("resolved",), limit=patience)


def _train(
    world: CrashWorld, *, create: bool, epochs: int, checkpoint_every: int, patience: float
) -> None:
    core, clock, rng = world.core, world.clock, world.rng
    world.reopen(create=create, patience=patience)
    if not core.machine.allows("start"):
        return
    core.start(now=clock())
    world.accepted()
    if not world.finishing:
        while len(world.logged) < epochs:
            world.runner.run_until(clock() + rng.uniform(*world.profile.epoch_seconds))
            if not core.machine.records:
                return
            epoch = len(world.logged)
            world.epoch(checkpoint=epoch % checkpoint_every == 0)
    if core.machine.allows("finish"):
        # A trainer that died inside finish() calls it again with the same weights.
        world.finishing = True
        world.finish(timeout=patience)


def play_crashing(
    world: CrashWorld,
    *,
    epochs: int,
    checkpoint_every: int,
    patience: float,
    expect: Expect | None,
) -> None:
    """Run the trainer through every death and restart, then check how it ended."""
    create = world.rng.random() < 0.5
    try:
        for _ in range(len(world.deaths) + 1):
            try:
                _train(
                    world,
                    create=create,
                    epochs=epochs,
                    checkpoint_every=checkpoint_every,
                    patience=patience,
                )
                break
            except Crash:
                world.restart()
        world.persist()
    except Exception as exc:  # noqa: BLE001 - reported as the seed's failure
        world.checker.violate(CRASH, f"{type(exc).__name__}: {exc}")
        expect = None
    try:
        world.check_end(expect=expect)
    except Exception as exc:  # noqa: BLE001 - the same, for a core that breaks on inspection
        world.checker.violate(CRASH, f"{type(exc).__name__} while checking: {exc}")
