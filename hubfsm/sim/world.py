"""Seeded simulation of whole training sessions against the in-memory hub.

One seed fixes everything: the trainer's timing and metrics, the fault windows, the
faults, the jitter. :func:`run_seed` drives the real core, machine and retry policy on a
virtual clock and checks the invariants of the design after every step and at the end.
The profiles (what the hub and the trainer do) live in :mod:`hubfsm.sim.profiles`.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from hubfsm.core import protocol
from hubfsm.core.engine import Core, CoreConfig, Limits
from hubfsm.core.identifier import parse_identifier
from hubfsm.hub.domain import Audit, Hub
from hubfsm.hub.store_memory import MemoryStore
from hubfsm.runtime.inline import Clock, SimRunner, VirtualClock
from hubfsm.sim.invariants import CRASH, Checker, Entry, Violation
from hubfsm.sim.profiles import PROFILES, Expect, Profile, Scenario, Window, mix_text
from hubfsm.transport import FilePart, Request, Response, Transport
from transports.faults import FaultInjectingTransport
from transports.memory import InMemoryTransport

__all__ = ["EPOCH_ZERO", "PROFILES", "TIMEOUT", "Profile", "SimResult", "World", "run_seed"]

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

_METRIC_KEYS = tuple(f"metrics/m{i}" for i in range(8))

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

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return not self.violations

    def replay_command(self) -> str:
        """The command that replays this seed with its trace."""
        http = " --http" if self.http else ""
        return (
            f"hubfsm simulate{http} --profile {self.profile} --epochs {self.epochs} "
            f"--seed {self.seed} --trace"
        )


def _token(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALNUM) for _ in range(n))


class ScheduledFaults(Transport):
    """Applies a :class:`~hubfsm.sim.profiles.Scenario` as virtual time passes.

    Before each request it sets the fault injector's mix to the window in force (only when
    the window changes, so anyone else's change of mix lasts until the next boundary), and
    revokes the key once its time has come. Both are noted in the trace.
    """

    def __init__(
        self,
        faults: FaultInjectingTransport,
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

    def send(self, request: Request) -> Response:
        """Bring the scenario up to now, then send through the fault injector."""
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
        return self.faults.send(request)


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

    def accepted(self) -> None:
        """A trainer's call returned (a real session has the event in its journal now)."""

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
        metrics = {key: round(draw(), 6) for key in _METRIC_KEYS}
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
        metrics, uploads = self.applied()
        finals = [sha for kind, _, sha in uploads if kind == "final"]
        self.checker.finish(
            self.core,
            logged=self.logged,
            on_hub=self.on_hub(),
            applied=metrics,
            uploads=uploads,
            final_sha256=finals[-1] if finals else None,
            expected_sha256=self.expected_sha,
            secrets=[self.key],
            expect=expect,
        )


class World(Stage):
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
        self.runner = SimRunner(self.core, outer, self.clock, observer=self.checker)
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

    An exception from the core or the runner is a failing run (a crash), not an abort,
    so a whole batch of seeds still reports it with its replay command.

    Args:
        world: The session and everything around it.
        epochs: Epochs the trainer runs, unless the session stops training first.
        checkpoint_every: The trainer offers weights every this many epochs.
        epoch_seconds: The range of an epoch's duration, drawn uniformly.
        patience: Seconds the trainer waits for opening, and for the final upload.
        expect: How the session must end (see :meth:`Checker.finish`), or None.
    """
    core, clock, rng = world.core, world.clock, world.rng
    try:
        world.open(create=rng.random() < 0.5, timeout=patience)
        if core.machine.allows("start"):
            core.start(now=clock())
            for epoch in range(epochs):
                world.runner.run_until(clock() + rng.uniform(*epoch_seconds))
                # The crash profile goes here: at a drawn epoch the world drops its core
                # and runner, builds new ones from the durable outbox, and training resumes.
                if not core.machine.records:
                    break
                world.epoch(checkpoint=epoch % checkpoint_every == 0)
            if core.machine.allows("finish"):
                world.finish(timeout=patience)
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


def run_seed(
    seed: int,
    *,
    profile: str | Profile = "flaky",
    epochs: int = 50,
    checkpoint_every: int = 1,
    config: CoreConfig | None = None,
    check_limits: Limits | None = None,
    core_factory: CoreFactory = Core,
    keep_trace: bool = True,
) -> SimResult:
    """Simulate one training session and check the invariants.

    Args:
        seed: Fixes every random choice of the run.
        profile: A name from :data:`~hubfsm.sim.profiles.PROFILES`, or a :class:`Profile`.
        epochs: Epochs the simulated trainer runs.
        checkpoint_every: The trainer saves weights every this many epochs.
        config: The core's limits and policies.
        check_limits: The limits the checker holds the core to; by default the core's own.
        core_factory: Makes the core, called like :class:`Core` (tests plant bugs with it).
        keep_trace: Keep the trace of a run that broke nothing (a failing run keeps it).
    """
    started = time.perf_counter()
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    kwargs: dict[str, Any] = {
        "epochs": epochs, "config": config, "check_limits": check_limits,
        "core_factory": core_factory,
    }  # fmt: skip
    if prof.refusals is not None:
        from hubfsm.sim.refusing import RefusingWorld

        refusing = RefusingWorld(seed, prof, **kwargs)
        play(
            refusing,
            epochs=epochs,
            checkpoint_every=checkpoint_every,
            epoch_seconds=prof.epoch_seconds,
            patience=prof.patience,
            expect=prof.expect,
        )
        return result_of(refusing, epochs=epochs, started=started, keep_trace=keep_trace)
    if prof.crashes[1] > 0:
        from hubfsm.sim.crash import CrashWorld, play_crashing

        crashing = CrashWorld(seed, prof, **kwargs)
        play_crashing(
            crashing,
            epochs=epochs,
            checkpoint_every=checkpoint_every,
            patience=prof.patience,
            expect=prof.expect,
        )
        return result_of(crashing, epochs=epochs, started=started, keep_trace=keep_trace)
    world = World(seed, prof, **kwargs)
    play(
        world,
        epochs=epochs,
        checkpoint_every=checkpoint_every,
        epoch_seconds=prof.epoch_seconds,
        patience=prof.patience,
        expect=prof.expect,
    )
    return result_of(world, epochs=epochs, started=started, keep_trace=keep_trace)
