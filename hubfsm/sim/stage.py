"""The trainer's side of a simulated run, and the loop that plays it.

:class:`Stage` is what a simulated trainer does (open, train epochs, finish, die and
come back) over whatever hub and clock a world provides; :func:`play` drives a stage
through one run and checks how it ended; :func:`result_of` reports it as a
:class:`SimResult`. The worlds themselves live in :mod:`hubfsm.sim.world` (in memory)
and :mod:`hubfsm.sim.http_world` (over real HTTP).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from hubfsm.core import protocol
from hubfsm.core.engine import Core
from hubfsm.core.identifier import parse_identifier
from hubfsm.hub.domain import Audit, Hub
from hubfsm.runtime.inline import Clock, SimRunner
from hubfsm.sim.crash import Crash
from hubfsm.sim.invariants import CRASH, Checker, Entry, Violation
from hubfsm.sim.profiles import Expect, Profile
from hubfsm.transport import FilePart

#: The metrics a simulated epoch reports, beside the loss.
METRIC_KEYS = tuple(f"metrics/m{i}" for i in range(8))

#: Virtual seconds each request takes on top of what the fault injector adds.
LATENCY = 0.05

#: Virtual seconds a request times out after, in the simulated transport.
TIMEOUT = 30.0

#: Where the virtual clock starts (any value; not zero, so no code relies on it).
EPOCH_ZERO = 1_000_000.0

#: Makes the session's core: called like :class:`Core` (a subclass plants a bug in tests).
CoreFactory = Callable[..., Core]


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


class Stage:
    """The trainer's side of a simulated session, over whatever hub and clock a world has.

    A world sets the attributes below and provides the hooks; :func:`play` drives it.
    """

    seed: int
    profile: Profile
    rng: random.Random
    clock: Clock
    key: str
    checker: Checker
    core: Core
    runner: SimRunner
    logged: list[int]
    expected_sha: str | None

    def _file(self, path: str, name: str, content: bytes) -> FilePart:
        """Keep a weights file where the transport reads it from."""
        raise NotImplementedError

    def _existing_model(self) -> str:
        """Create a model on the hub behind the session's back, and return its id."""
        raise NotImplementedError

    def hub_now(self) -> Hub:
        """The hub as it is now."""
        raise NotImplementedError

    #: Request numbers at which the process dies (a world without crashes has none).
    deaths: set[int] = set()
    #: True once the trainer has finished (or died inside ``finish``).
    finishing = False
    #: True once the trainer was killed for good, leaving the rest to ``hubfsm sync``.
    gave_up = False

    def accepted(self) -> None:
        """A trainer's call returned (a real session has the event in its journal now)."""

    def start(self) -> None:
        """The trainer starts training."""
        self.core.start(now=self.clock())
        self.accepted()

    def restart(self) -> None:
        """The process died: start a new one (only worlds with crashes have deaths)."""
        raise NotImplementedError

    def wrap_up(self) -> None:
        """The trainer is gone: end the session the way a process ends."""

    def open(self, *, create: bool, timeout: float = 3600.0) -> None:
        """Open the session on a new local file (``create``) or on a model the hub has.

        The trainer waits ``timeout`` seconds for the hub to load or create the model.
        """
        core = self.core
        if create:
            payload = protocol.create_payload("yolov8n.pt", {"data": "coco8"})
            core.open(parse_identifier("yolov8n.pt"), create=payload, now=self.clock())
        else:
            core.open(parse_identifier(self._existing_model()), now=self.clock())
        self.runner.run_while(("resolved",), limit=timeout)

    def epoch(self, *, checkpoint: bool) -> None:
        """The trainer ends an epoch now: metrics, and maybe weights."""
        epoch = len(self.logged)
        rng = self.rng
        draw = rng.random
        metrics = {key: round(draw(), 6) for key in METRIC_KEYS}
        metrics["train/loss"] = round(1.0 / (epoch + 1), 6)
        self.core.epoch_end(epoch, metrics, now=self.clock())
        self.logged.append(epoch)
        if checkpoint:
            content = f"weights of epoch {epoch} seed {self.seed}".encode()
            part = self._file(f"weights/epoch{epoch}.pt", "last.pt", content)
            self.core.checkpoint(epoch, part, is_best=rng.random() < 0.3, now=self.clock())
        self.accepted()

    def finish(self, *, timeout: float = 7200.0) -> None:
        """The trainer ends training and waits for the final upload (or its timeout)."""
        best = self._file("weights/best.pt", "best.pt", f"best of seed {self.seed}".encode())
        self.expected_sha = best.sha256
        last = max(len(self.logged) - 1, 0)
        self.core.finish(last, best, map50_95=0.5, now=self.clock(), timeout=timeout)
        self.accepted()
        self.runner.run_while(("final_uploading",), limit=timeout + 100.0)

    def on_hub(self) -> set[int]:
        """The epochs whose metrics the hub holds."""
        model_id = self.core.model_id
        if model_id is None:
            return set()
        # From the store itself: what the hub would list, without decoding every epoch.
        return {epoch for epoch, _ in self.hub_now().store.get_metrics(model_id)}

    def audits(self) -> list[Audit]:
        """What the hub applied (one audit per life of the hub, if it was restarted)."""
        return [self.hub_now().audit()]

    def applied(self) -> tuple[dict[int, int], list[tuple[str, int, str]]]:
        """What the hub applied for the session's model: metrics per epoch, and uploads."""
        model_id = self.core.model_id or ""
        metrics: Counter[int] = Counter()
        uploads = []
        for audit in self.audits():
            metrics.update({e: n for (m, e), n in audit.metrics_applied.items() if m == model_id})
            uploads += [
                (u.type, u.epoch, u.sha256) for u in audit.uploads if u.model_id == model_id
            ]
        return dict(metrics), uploads

    def check_end(self, *, expect: Expect | None = None) -> None:
        """Check the invariants that need the whole run (and how it ended, if ``expect``)."""
        self.check_hub(
            expect=expect,
            queued=self.runner.inbox.queued_epochs(),
        )

    def check_hub(self, **more: Any) -> None:
        """Check what the hub holds against what the trainer did (``more``: for the checker)."""
        metrics, uploads = self.applied()
        finals = [sha for kind, _, sha in uploads if kind == "final"]
        reused = sum(sum(audit.reused.values()) for audit in self.audits())
        self.checker.finish(
            self.core,
            logged=self.logged,
            on_hub=self.on_hub(),
            applied=metrics,
            uploads=uploads,
            final_sha256=finals[-1] if finals else None,
            expected_sha256=self.expected_sha,
            secrets=[self.key],
            reused=reused,
            **more,
        )


def _train(
    world: Stage,
    *,
    create: bool,
    epochs: int,
    checkpoint_every: int,
    epoch_seconds: tuple[float, float],
    patience: float,
) -> None:
    """One life of the trainer: open (again), train the epochs left, finish."""
    world.open(create=create, timeout=patience)
    if not world.core.machine.allows("start"):
        return
    world.start()
    if not world.finishing:
        while len(world.logged) < epochs:
            world.runner.run_until(world.clock() + world.rng.uniform(*epoch_seconds))
            if not world.core.machine.records:
                return
            epoch = len(world.logged)
            world.epoch(checkpoint=epoch % checkpoint_every == 0)
    if world.core.machine.allows("finish"):
        # A trainer that died inside finish() calls it again with the same weights.
        world.finishing = True
        world.finish(timeout=patience)


def play(
    world: Stage,
    *,
    epochs: int,
    checkpoint_every: int,
    epoch_seconds: tuple[float, float],
    patience: float,
    expect: Expect | None,
) -> None:
    """Run the trainer's side of a session in ``world``, then check how it ended.

    A process that dies (see :mod:`hubfsm.sim.crash`) is started again from what it
    left on disk, as often as the world's deaths say. An exception from the client is a
    failing run (a crash), not an abort, so a whole batch of seeds still reports it with
    its replay command.

    Args:
        world: The session and everything around it.
        epochs: Epochs the trainer runs, unless the session stops training first.
        checkpoint_every: The trainer offers weights every this many epochs.
        epoch_seconds: The range of an epoch's duration, drawn uniformly.
        patience: Seconds the trainer waits for opening, and for the final upload.
        expect: How the session must end (see :meth:`Checker.finish`), or None.
    """
    create = world.rng.random() < 0.5
    try:
        for _ in range(len(world.deaths) + 1):
            try:
                _train(
                    world,
                    create=create,
                    epochs=epochs,
                    checkpoint_every=checkpoint_every,
                    epoch_seconds=epoch_seconds,
                    patience=patience,
                )
                break
            except Crash:
                if world.gave_up:
                    break
                world.restart()
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
    world: Stage, *, epochs: int, started: float, keep_trace: bool, **extra: Any
) -> SimResult:
    """The :class:`SimResult` of a played world."""
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
        **extra,
    )
