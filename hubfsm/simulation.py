"""Seeded simulation of whole training sessions against the in-memory hub.

One seed fixes everything: the trainer's timing and metrics, the faults, the jitter.
:func:`run_seed` drives the real core, machine and retry policy on a virtual clock and
checks the invariants of the design after every step and at the end.
"""

from __future__ import annotations

import hashlib
import random
import time

import attrs

from hubfsm import protocol
from hubfsm.core import Core, CoreConfig, Limits
from hubfsm.hub.domain import Hub
from hubfsm.hub.faults import FaultMix
from hubfsm.hub.store_memory import MemoryStore
from hubfsm.identifier import parse_identifier
from hubfsm.invariants import Checker, Violation
from hubfsm.runner_sim import SimRunner, VirtualClock
from hubfsm.transport import FilePart
from transports.faults import FaultInjectingTransport
from transports.memory import InMemoryTransport

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

#: Virtual seconds a request times out after, in the simulated transport.
TIMEOUT = 30.0


@attrs.frozen
class Profile:
    """A kind of hub and trainer to simulate.

    Attributes:
        name: The profile's name.
        faults: The fault mix of every request.
        epoch_seconds: The range of an epoch's virtual duration.
    """

    name: str
    faults: FaultMix
    epoch_seconds: tuple[float, float] = (20.0, 60.0)


PROFILES: dict[str, Profile] = {
    "calm": Profile("calm", FaultMix(latency=(0.01, 0.2))),
    "flaky": Profile(
        "flaky",
        FaultMix(
            server_error=0.20,
            rate_limited=0.05,
            timeout=0.05,
            lost_response=0.05,
            retry_after=(1.0, 30.0),
            latency=(0.01, 0.5),
        ),
    ),
}


@attrs.frozen
class SimResult:
    """What one simulated session did, and which invariants it broke."""

    seed: int
    profile: str
    epochs: int
    state: str
    violations: tuple[Violation, ...]
    trace: tuple[str, ...]
    requests: int
    retries: int
    virtual_seconds: float
    wall_seconds: float

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return not self.violations

    def replay_command(self) -> str:
        """The command that replays this seed with its trace."""
        return (
            f"hubfsm simulate --profile {self.profile} --epochs {self.epochs} "
            f"--seed {self.seed} --trace"
        )


def _token(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALNUM) for _ in range(n))


def _file(files: dict[str, bytes], path: str, name: str, content: bytes) -> FilePart:
    files[path] = content
    return FilePart(name, path, len(content), hashlib.sha256(content).hexdigest())


class World:
    """One simulated session and everything around it: hub, clock, faults, checker.

    Args:
        seed: Fixes every random choice.
        profile: The fault mix and the trainer's pace.
        config: The core's limits and policies.
        check_limits: The limits the checker holds the core to; by default the core's own.
    """

    def __init__(
        self,
        seed: int,
        profile: Profile,
        *,
        config: CoreConfig | None = None,
        check_limits: Limits | None = None,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.rng = rng = random.Random(seed)
        self.clock = clock = VirtualClock(EPOCH_ZERO)
        config = config or CoreConfig()
        limits = check_limits or config.limits
        self.key = _token(rng, 42)
        self.hub = Hub(MemoryStore(), clock, seed=rng.getrandbits(32), keys=[self.key])
        self.files: dict[str, bytes] = {}
        self.checker = Checker(
            clock,
            metrics=limits.metrics,
            checkpoint=limits.checkpoint,
            heartbeat=limits.heartbeat,
            heartbeat_slack=TIMEOUT + profile.faults.latency[1] + 0.1,
        )
        self.core = Core(
            config, rng=random.Random(rng.getrandbits(64)), on_change=self.checker.changed
        )
        self.transport = FaultInjectingTransport(
            InMemoryTransport(self.hub, self.key, read_file=self.files.__getitem__),
            random.Random(rng.getrandbits(64)),
            profile.faults,
            sleep=clock.sleep,
            timeout=TIMEOUT,
        )
        self.runner = SimRunner(self.core, self.transport, clock, observer=self.checker)
        self.logged: list[int] = []
        self.expected_sha: str | None = None

    def open(self, *, create: bool) -> None:
        """Open the session on a new local file (``create``) or on a model the hub has."""
        core = self.core
        if create:
            payload = protocol.create_payload("yolov8n.pt", {"data": "coco8"})
            core.open(parse_identifier("yolov8n.pt"), create=payload, now=self.clock.now)
        else:
            created = InMemoryTransport(self.hub, self.key).send(
                protocol.create_model(protocol.create_payload("yolov8n.yaml", {"data": "coco8"}))
            )
            core.open(parse_identifier(str(created.data["id"])), now=self.clock.now)
        self.runner.run_while(("resolved",), limit=3600.0)

    def epoch(self, *, checkpoint: bool) -> None:
        """The trainer ends an epoch now: metrics, and maybe weights."""
        epoch = len(self.logged)
        rng = self.rng
        metrics = {f"metrics/m{i}": round(rng.random(), 6) for i in range(8)}
        metrics["train/loss"] = round(1.0 / (epoch + 1), 6)
        self.core.epoch_end(epoch, metrics, now=self.clock.now)
        self.logged.append(epoch)
        if checkpoint:
            part = _file(
                self.files,
                f"weights/epoch{epoch}.pt",
                "last.pt",
                f"weights of epoch {epoch} seed {self.seed}".encode(),
            )
            self.core.checkpoint(epoch, part, is_best=rng.random() < 0.3, now=self.clock.now)

    def finish(self, *, timeout: float = 7200.0) -> None:
        """The trainer ends training and waits for the final upload (or its timeout)."""
        best = _file(self.files, "weights/best.pt", "best.pt", f"best of seed {self.seed}".encode())
        self.expected_sha = best.sha256
        last = max(len(self.logged) - 1, 0)
        self.core.finish(last, best, map50_95=0.5, now=self.clock.now, timeout=timeout)
        self.runner.run_while(("final_uploading",), limit=timeout + 100.0)

    def on_hub(self) -> set[int]:
        """The epochs whose metrics the hub holds."""
        model_id = self.core.model_id
        return {row["epoch"] for row in self.hub.metrics(model_id)} if model_id else set()

    def check_end(self) -> None:
        """Check the invariants that need the whole run."""
        audit = self.hub.audit()
        model_id = self.core.model_id or ""
        finals = [u for u in audit.uploads if u.model_id == model_id and u.type == "final"]
        self.checker.finish(
            self.core,
            logged=self.logged,
            on_hub=self.on_hub(),
            applied={e: n for (m, e), n in audit.metrics_applied.items() if m == model_id},
            final_sha256=finals[-1].sha256 if finals else None,
            expected_sha256=self.expected_sha,
            secrets=[self.key],
        )


#: Where the virtual clock starts (any value; not zero, so no code relies on it).
EPOCH_ZERO = 1_000_000.0


def run_seed(
    seed: int,
    *,
    profile: str | Profile = "flaky",
    epochs: int = 50,
    checkpoint_every: int = 1,
    config: CoreConfig | None = None,
    check_limits: Limits | None = None,
) -> SimResult:
    """Simulate one training session and check the invariants.

    Args:
        seed: Fixes every random choice of the run.
        profile: A name from :data:`PROFILES`, or a :class:`Profile`.
        epochs: Epochs the simulated trainer runs.
        checkpoint_every: The trainer saves weights every this many epochs.
        config: The core's limits and policies.
        check_limits: The limits the checker holds the core to; by default the core's own.
    """
    started = time.perf_counter()
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    world = World(seed, prof, config=config, check_limits=check_limits)
    core, clock, rng = world.core, world.clock, world.rng
    world.open(create=rng.random() < 0.5)
    if core.state in ("created", "loaded"):
        core.start(now=clock.now)
        for epoch in range(epochs):
            world.runner.run_until(clock.now + rng.uniform(*prof.epoch_seconds))
            if core.state != "training":
                break
            world.epoch(checkpoint=epoch % checkpoint_every == 0)
        if core.state == "training":
            world.finish()
    world.check_end()
    return SimResult(
        seed=seed,
        profile=prof.name,
        epochs=epochs,
        state=core.state,
        violations=tuple(world.checker.violations),
        trace=tuple(world.checker.trace),
        requests=sum(core.stats.sent.values()),
        retries=core.stats.retries,
        virtual_seconds=clock.now - EPOCH_ZERO,
        wall_seconds=time.perf_counter() - started,
    )
