"""``hubfsm simulate --http``: the same sessions over real HTTP against a local hub.

Virtual time cannot drive a real server, so the clock is real and everything is scaled
down: the core's limits and retry policies, the trainer's epochs, the fault windows. The
local hub (:class:`~hubfsm.hub.server.LocalHub` on loopback, in a temporary directory)
injects the profile's ``http_faults`` server side, seeded from the seed; a partition
stops the hub for a while, a revocation removes the key from it. The runner and checker
of the simulation run on the calling thread, so every request and outcome is checked as
it happens; the hub's side is checked from its audit at the end.

The trace is not repeatable byte for byte over HTTP (real time, real threads); the
invariants are checked all the same.
"""

from __future__ import annotations

import hashlib
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import requests

from hubfsm.core import protocol
from hubfsm.core.dialect import PLATFORM, ProtocolName, parse_platform_identifier
from hubfsm.core.engine import Core, CoreConfig, Limits
from hubfsm.core.retry import ChannelPolicies, RetryPolicy
from hubfsm.hub.domain import Audit, Hub
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.inline import RealClock, SimRunner
from hubfsm.sim.invariants import Checker
from hubfsm.sim.platform_checks import PlatformChecker, platform_applied
from hubfsm.sim.profiles import PROFILES, Profile, Scenario, Schedule, Window
from hubfsm.sim.stage import SimResult, Stage, play, result_of
from hubfsm.sim.world import PLATFORM_PROJECT, platform_model
from hubfsm.transport import FilePart, Request, Response, Transport
from transports.faults import FaultMix
from transports.http import RequestsTransport
from transports.memory import InMemoryTransport
from transports.platform import PlatformTransport

#: The hub's limits, scaled down 100 to 3000 times so a session takes about a second.
LIMITS = Limits(metrics=0.03, checkpoint=0.3, heartbeat=0.5, park=0.2, checkpoint_grace=0.04)

#: Retry policies on the same scale: waits of tens of milliseconds, deadlines of seconds.
#: A Retry-After (whole seconds over HTTP) up to 1.5 s is waited out.
POLICIES = ChannelPolicies(
    control=RetryPolicy(base=0.02, cap=0.2, max_attempts=4, deadline=2.0, max_retry_after=1.5),
    metrics=RetryPolicy(base=0.02, cap=0.2, max_attempts=5, deadline=2.0, max_retry_after=1.5),
    heartbeat=RetryPolicy(base=0.02, cap=0.1, max_attempts=3, deadline=0.2, max_retry_after=1.5),
    checkpoint=RetryPolicy(base=0.02, cap=0.3, max_attempts=8, deadline=4.0, max_retry_after=1.5),
    final=RetryPolicy(base=0.02, cap=0.3, max_attempts=10, deadline=6.0, max_retry_after=1.5),
)

CONFIG = CoreConfig(limits=LIMITS, policies=POLICIES, nonce=protocol.seeded_nonce)

#: The same for the Platform dialect: its limits (no heartbeat on the wire, one epoch as
#: soon as the one before is acknowledged) with the checkpoint limit scaled down as above.
PLATFORM_CONFIG = attrs.evolve(
    CONFIG, limits=attrs.evolve(LIMITS, metrics=0.0, heartbeat=math.inf), protocol="platform"
)

#: Client timeouts, and how long an injected server-side timeout stalls (a bit longer).
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 0.5
HANG = 0.6

#: A real epoch's length, and how long the trainer waits for opening and the final upload.
EPOCH_SECONDS = (0.05, 0.15)
PATIENCE = 10.0

#: The hard bound on one seed's wall time.
HARD_TIMEOUT = 20.0

#: How long a partition stops the hub, in real seconds.
PARTITION_SECONDS = (0.5, 1.5)

#: Scheduling noise of a real clock, added to the heartbeat slack.
_JITTER = 0.25


def http_scenario(profile: Profile, rng: random.Random, *, start: float, epochs: int) -> Scenario:
    """Draw one seed's scenario on the real clock, within the shortest training time.

    It has a partition if the profile has unreachable windows, and a revocation time if
    the profile revokes the key. The profile's other windows are not replayed over HTTP:
    its ``http_faults`` stand in for them.
    """
    horizon = max(1, epochs) * EPOCH_SECONDS[0]
    windows = []
    if any(rule.unreachable for rule in profile.windows):
        begin = start + rng.uniform(0.0, horizon)
        end = begin + rng.uniform(*PARTITION_SECONDS)
        windows.append(Window(begin, end, FaultMix(connection_error=1.0), "partition"))
    revoke_at = None if profile.revoke is None else start + rng.uniform(*profile.revoke) * horizon
    return Scenario(Schedule(profile.http_faults, tuple(windows)), revoke_at)


class _HubControl(Transport):
    """Brings the local hub in line with the scenario before each request, then sends."""

    def __init__(self, world: HttpWorld, inner: Transport, scenario: Scenario) -> None:
        self.world = world
        self.inner = inner
        self.scenario = scenario

    def send(self, request: Request) -> Response:
        """Stop, restart or revoke as the scenario says for now, then send ``request``."""
        world = self.world
        now = world.clock()
        down = self.scenario.schedule.at(now) is not None
        if down and world.running:
            world.stop_hub()
            world.checker.note("partition begins: the local hub is stopped")
        elif not down and not world.running:
            world.start_hub()
            world.checker.note("partition ends: the local hub is back")
        revoke_at = self.scenario.revoke_at
        if not world.revoked and revoke_at is not None and now >= revoke_at:
            world.revoke()
            world.checker.note("the API key is revoked")
        return self.inner.send(request)

    def close(self) -> None:
        """Close the HTTP transport."""
        self.inner.close()


class HttpWorld(Stage):
    """One session against a local hub over loopback HTTP, on the real clock.

    Args:
        seed: Seeds the trainer, the jitter, the scenario and the server's faults.
        profile: The profile; its ``http_faults`` are injected by the server.
        root: A fresh directory for the hub's data and the weight files.
        epochs: The epochs the trainer will run.
        protocol: ``hub`` or ``platform``: the dialect the session speaks.
    """

    def __init__(
        self,
        seed: int,
        profile: Profile,
        root: Path,
        *,
        epochs: int,
        protocol: ProtocolName = "hub",
    ) -> None:
        self.seed = seed
        self.protocol = protocol
        platform = protocol == "platform"
        self.profile = profile
        self.rng = rng = random.Random(seed)
        self.clock = clock = RealClock()
        mix = profile.http_faults
        self.local = LocalHub(
            root / "hub", faults=None if mix.quiet else mix, seed=rng.getrandbits(32), hang=HANG
        )
        self.local.start()
        self.running = True
        self.revoked = False
        self._audits: list[Audit] = []
        self.key = self.local.api_key
        if platform:
            # The Platform API takes only ``ul_`` keys: one more key on the same hub.
            self.key = f"ul_{rng.getrandbits(160):040x}"
            self.local.hub.ensure_key(self.key, label="simulated trainer")
        self.files = root / "files"
        self.logged = []
        origin = clock()
        config = PLATFORM_CONFIG if platform else CONFIG
        self.checker = (PlatformChecker if platform else Checker)(
            clock,
            metrics=config.limits.metrics,
            checkpoint=config.limits.checkpoint,
            heartbeat=config.limits.heartbeat,
            heartbeat_slack=READ_TIMEOUT + mix.latency[1] + _JITTER,
            origin=origin,
            policies=POLICIES,
            **({"logged": self.logged} if platform else {}),
        )
        self.core = Core(
            config, rng=random.Random(rng.getrandbits(64)), on_change=self.checker.changed
        )
        scenario = http_scenario(
            profile, random.Random(rng.getrandbits(64)), start=origin, epochs=epochs
        )
        self._session: requests.Session | None = None
        if platform:
            # The headers each request really carried: the key must not go with a PUT.
            self._session = requests.Session()
            self._session.hooks["response"].append(self._check_put)
        http = (PlatformTransport if platform else RequestsTransport)(
            self.key,
            api_root=self.local.url,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            progress=False,
            session=self._session,
        )
        self.transport = _HubControl(self, http, scenario)
        driver = Driver(self.core, self.transport, clock=clock, observer=self.checker, quiet=True)
        self.runner = SimRunner(driver, deadline=origin + HARD_TIMEOUT)
        self.expected_sha = None

    def _check_put(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """A response hook: a PUT to the signed URL went without the key."""
        sent = response.request
        headers = {name.lower() for name in sent.headers}
        if sent.method == "PUT" and headers & {"authorization", "x-api-key"}:
            assert isinstance(self.checker, PlatformChecker)
            self.checker.key_sent_to_upload()

    # -- the scenario's levers ------------------------------------------------------

    def stop_hub(self) -> None:
        """Stop the server (its audit, kept in memory, is saved first)."""
        self._audits.append(self.local.hub.audit())
        self.local.stop()
        self.running = False

    def start_hub(self) -> None:
        """Start the server again on the same port and data; a revoked key stays revoked."""
        self.local.start()
        self.running = True
        if self.revoked:
            self.local.hub.revoke_key(self.key)

    def revoke(self) -> None:
        """Revoke the session's key on the hub."""
        self.revoked = True
        if self.running:
            self.local.hub.revoke_key(self.key)

    # -- the Stage's hooks ------------------------------------------------------------

    def _file(self, path: str, name: str, content: bytes) -> FilePart:
        where = self.files / path
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(content)
        return FilePart(name, str(where), len(content), hashlib.sha256(content).hexdigest())

    def open(self, *, create: bool, timeout: float = 3600.0) -> None:
        """Open the session; a Platform one with ``training_started``."""
        if self.protocol != "platform":
            super().open(create=create, timeout=timeout)
            return
        identifier = PLATFORM_PROJECT if create else self._existing_model()
        data = PLATFORM.train_data({"data": "coco8"})
        self.core.open(parse_platform_identifier(identifier), create=data, now=self.clock())
        self.runner.run_while(("resolved",), limit=timeout)

    def _existing_model(self) -> str:
        if self.protocol == "platform":
            return platform_model(InMemoryTransport(self.local.hub, self.key))
        created = InMemoryTransport(self.local.hub, self.key).send(
            protocol.create_model(protocol.create_payload("yolov8n.yaml", {"data": "coco8"}))
        )
        return str(created.data["id"])

    def hub_now(self) -> Hub:
        """The running hub (restarted if a partition was still on)."""
        if not self.running:
            self.start_hub()
        return self.local.hub

    def applied(self) -> tuple[dict[int, int], list[tuple[str, int, str]]]:
        """What the hub applied (for Platform: what it holds, see :func:`platform_applied`)."""
        if self.protocol == "platform":
            return platform_applied(self.hub_now(), self.core.model_id or "")
        return super().applied()

    def audits(self) -> list[Audit]:
        """The audit of every life of the hub: a restart starts a fresh one."""
        return [*self._audits, self.hub_now().audit()]

    def close(self) -> None:
        """Close the transport and stop the hub."""
        self.transport.close()
        if self._session is not None:
            self._session.close()
        self.local.stop()


def run_http_seed(
    seed: int,
    *,
    profile: str | Profile = "flaky",
    epochs: int = 8,
    keep_trace: bool = True,
    protocol: ProtocolName = "hub",
) -> SimResult:
    """Run one seed's session over HTTP against a fresh local hub and check the invariants.

    Args:
        seed: Seeds the trainer, the jitter, the scenario and the server's faults.
        profile: A name from :data:`~hubfsm.sim.profiles.PROFILES`, or a :class:`Profile`.
        epochs: Epochs the trainer runs (each 0.05 to 0.15 s).
        keep_trace: Keep the trace of a run that broke nothing.
        protocol: ``hub`` or ``platform``: the dialect the session speaks.
    """
    started = time.perf_counter()
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    with tempfile.TemporaryDirectory(prefix="hubfsm-sim-") as tmp:
        world = HttpWorld(seed, prof, Path(tmp), epochs=epochs, protocol=protocol)
        try:
            play(
                world,
                epochs=epochs,
                checkpoint_every=1,
                epoch_seconds=EPOCH_SECONDS,
                patience=PATIENCE,
                expect=prof.expect,
            )
            return result_of(
                world,
                epochs=epochs,
                started=started,
                keep_trace=keep_trace,
                http=True,
                protocol=protocol,
            )
        finally:
            world.close()
