"""One seed's run: play a world through the trainer's lives, check it, report.

:func:`run_seed` makes the world a profile runs in (an in-memory hub on a virtual
clock, refusing or not), :func:`play` drives the simulated trainer through it (starting
a dead process again as often as the world's deaths say) and checks how it ended, and
:func:`result_of` reports it as a :class:`SimResult`, the report of every world's run.
:mod:`hubfsm.sim.http_world` plays the same way over HTTP.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import attrs

from hubfsm.core.config import CoreConfig, Limits
from hubfsm.core.engine import Core
from hubfsm.core.protocol import ProtocolName
from hubfsm.runtime.factory import CoreFactory
from hubfsm.sim.bugs import Bugs
from hubfsm.sim.ends import die
from hubfsm.sim.invariants import CRASH, Entry, Violation
from hubfsm.sim.machine import Crash
from hubfsm.sim.profiles import named
from hubfsm.sim.refusing import RefusingWorld
from hubfsm.sim.scenario import Expect, Profile
from hubfsm.sim.trainer import train
from hubfsm.sim.world import World


@attrs.frozen
class SimResult:
    """What one simulated session did, and which invariants it broke.

    Attributes:
        trace: The full trace; empty when the run was asked not to keep it and passed.
        error: The class name of the session's error, if it ended with one.
        http: True for a run over real HTTP against a local hub.
        protocol: The dialect the session spoke: ``hub`` or ``platform``.
        faults: Machine faults injected (failed writes and snapshots, full-disk writes,
            kills and terminations inside ``finish()``, poison values and records).
    """

    seed: int
    profile: str
    epochs: int
    state: str
    violations: tuple[Violation, ...]
    trace: tuple[Entry, ...]
    requests: int
    retries: int
    virtual_seconds: float
    wall_seconds: float
    error: str | None = None
    http: bool = False
    protocol: str = "hub"
    faults: int = 0

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return not self.violations

    def replay_command(self) -> str:
        """The command that replays this seed with its trace."""
        http = " --http" if self.http else ""
        if self.protocol != "hub":
            http += f" --protocol {self.protocol}"
        return (
            f"hubfsm simulate{http} --profile {self.profile} --epochs {self.epochs} "
            f"--seed {self.seed} --trace"
        )


def play(world: World, *, epochs: int, checkpoint_every: int, expect: Expect | None) -> None:
    """Run the trainer's side of a session in ``world``, then check how it ended.

    A process that dies (see :class:`~hubfsm.sim.machine.Crash`) is started again from what it
    left on disk, as often as the world's deaths say. An exception from the client is a
    failing run (a crash), not an abort, so a whole batch of seeds still reports it with
    its replay command.

    Args:
        world: The session and everything around it.
        epochs: Epochs the trainer runs, unless the session stops training first.
        checkpoint_every: The trainer offers weights every this many epochs.
        expect: How the session must end (see :func:`~hubfsm.sim.ends.check_hub`), or None.
    """
    create = world.rng.random() < 0.5
    try:
        for _ in range(len(world.deaths) + 1):
            try:
                train(
                    world,
                    create=create,
                    epochs=epochs,
                    checkpoint_every=checkpoint_every,
                    epoch_seconds=world.profile.epoch_seconds,
                    patience=world.profile.patience,
                )
                break
            except Crash:
                if world.gave_up:
                    break
                # The process died and the trainer starts it again.
                world.restarts += 1
                die(world)
        world.wrap_up()
        if world.gave_up:
            expect = None  # the trainer never finished: sync delivers, nothing more
    except Exception as exc:  # noqa: BLE001 - reported as the seed's failure
        world.checker.violate(CRASH, f"{type(exc).__name__}: {exc}")
        expect = None  # how it ended says nothing more once it crashed
    try:
        world.check_end(expect=expect)
    except Exception as exc:  # noqa: BLE001 - the same, for a core that breaks on inspection
        world.checker.violate(CRASH, f"{type(exc).__name__} while checking: {exc}")


def result_of(
    world: World, *, epochs: int, started: float, keep_trace: bool, http: bool = False
) -> SimResult:
    """The :class:`SimResult` of a played world (``http``: it ran over real HTTP)."""
    core, checker = world.core, world.checker
    violations = tuple(checker.violations)
    return SimResult(
        seed=world.seed,
        profile=world.profile.name,
        epochs=epochs,
        state=core.state,
        violations=violations,
        trace=checker.trace if keep_trace or violations else (),
        requests=sum(core.stats.sent.values()),
        retries=core.stats.retries,
        virtual_seconds=world.clock() - checker.origin,
        wall_seconds=time.perf_counter() - started,
        error=type(core.error).__name__ if core.error is not None else None,
        http=http,
        protocol=world.protocol,
        faults=0 if world.machine is None else world.machine.injected,
    )


def run_seed(
    seed: int,
    *,
    profile: str | Profile = "flaky",
    epochs: int = 50,
    checkpoint_every: int = 1,
    config: CoreConfig | None = None,
    check_limits: Limits | None = None,
    core_factory: CoreFactory = Core,
    bugs: Bugs | None = None,
    durability: Literal["memory", "files"] = "memory",
    keep_trace: bool = True,
    protocol: ProtocolName = "hub",
) -> SimResult:
    """Simulate one training run through real sessions and check the invariants.

    Args:
        seed: Fixes every random choice of the run.
        profile: A name from :data:`~hubfsm.sim.profiles.PROFILES`, or a :class:`Profile`.
        epochs: Epochs the simulated trainer runs.
        checkpoint_every: The trainer saves weights every this many epochs.
        config: The core's limits and policies.
        check_limits: The limits the checker holds the core to; by default the core's own.
        core_factory: Makes the core, called like :class:`Core` (tests plant bugs with it).
        bugs: Other bugs to plant (see :class:`Bugs`).
        durability: ``memory`` or ``files`` (see :class:`World`).
        keep_trace: Keep the trace of a run that broke nothing (a failing run keeps it).
        protocol: ``hub`` or ``platform``: the dialect the sessions speak.
    """
    started = time.perf_counter()
    prof = named(profile) if isinstance(profile, str) else profile
    planted = bugs if bugs is not None else Bugs()
    if core_factory is not Core:
        planted = attrs.evolve(planted, core_factory=core_factory)
    with tempfile.TemporaryDirectory(prefix="hubfsm-sim-", dir=scratch_root()) as root:
        world = _world_class(prof)(
            seed,
            prof,
            root=Path(root),
            epochs=epochs,
            config=config,
            check_limits=check_limits,
            bugs=planted,
            durability=durability,
            protocol=protocol,
        )
        play(
            world,
            epochs=epochs,
            checkpoint_every=checkpoint_every,
            expect=prof.expect,
        )
        return result_of(world, epochs=epochs, started=started, keep_trace=keep_trace)


def _world_class(profile: Profile) -> type[World]:
    """The world a profile runs in: a refusing hub's, or the plain one."""
    if profile.refusals is None:
        return World
    return RefusingWorld


def scratch_root() -> str | None:
    """Where runs keep their files: memory-backed ``/dev/shm`` where there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
