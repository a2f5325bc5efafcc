"""``hubfsm simulate --http``: the same sessions over real HTTP against a local hub.

The trainer talks to the same :class:`~hubfsm.runtime.session.Session` as in memory
(see :class:`~hubfsm.sim.world.World`): the factory's composition on the inline shell,
with the real journal and outbox as files in the run's temporary directory, deaths and
restarts from them, machine faults, and ``hubfsm sync`` for what a trainer that gave up
left. Only where requests go and how time passes differ.

Virtual time cannot drive a real server, so the clock is real and everything is scaled
down: the core's limits and retry policies, the trainer's epochs and patience, the fault
windows, a dead process's restart. The local hub (:class:`~hubfsm.hub.server.LocalHub`
on loopback, in the same temporary directory) injects the profile's ``http_faults``
server side, seeded from the seed; a partition stops the hub for a while, a revocation
removes the key from it. The driver runs on the calling thread, so every request and
outcome is checked as it happens; the hub's side is checked from its audits at the end.
A seed's run is bounded by :data:`HARD_TIMEOUT` seconds plus :data:`EPOCH_ALLOWANCE` per
epoch; past it, the run fails.

The trace is not repeatable byte for byte over HTTP (real time, real threads); the
invariants are checked all the same.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import requests

from hubfsm.core.config import ChannelPolicies, CoreConfig, Limits, RetryPolicy, seeded_nonce
from hubfsm.core.protocol import ProtocolName
from hubfsm.hub.calls import Audit
from hubfsm.hub.domain import Hub
from hubfsm.hub.server import LocalHub
from hubfsm.runtime.shells import RealClock
from hubfsm.sim.bugs import NO_BUGS, Bugs
from hubfsm.sim.platform_checks import PlatformChecker
from hubfsm.sim.play import SimResult, play, result_of, scratch_root
from hubfsm.sim.profiles import named
from hubfsm.sim.refusing import RefusingWorld
from hubfsm.sim.scenario import Profile, RefusalDraw, Scenario, Schedule, WindowRule
from hubfsm.sim.world import World
from hubfsm.transport import Handler, Request, Response
from transports.faults import FaultMix
from transports.http import RequestsTransport
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

CONFIG = CoreConfig(limits=LIMITS, policies=POLICIES, nonce=seeded_nonce)

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

#: More patience per epoch: faults hold a second while epochs take a tenth, so a long
#: Platform run (a request an epoch) ends with more epochs queued the longer it ran.
PATIENCE_PER_EPOCH = 0.5

#: The hard bound on one seed's wall time, plus twice an epoch's time and patience each.
HARD_TIMEOUT = 30.0
EPOCH_ALLOWANCE = 2 * (EPOCH_SECONDS[1] + PATIENCE_PER_EPOCH)

#: Real seconds a dead process takes to come back.
RESTART_SECONDS = (0.05, 0.3)

#: How long a partition stops the hub, in real seconds.
PARTITION_SECONDS = (0.5, 1.5)

#: Scheduling noise of a real clock, added to the heartbeat slack.
_JITTER = 0.25

#: How late a sleep may end on a quiet machine (the kernel's timer slack, and a little).
_TIMER_SLACK = 0.002


#: The one window a partition profile gets over HTTP: the local hub is stopped.
_PARTITION = WindowRule("partition", (1, 1), PARTITION_SECONDS, FaultMix(connection_error=1.0))


def http_profile(profile: Profile, epochs: int = 0) -> Profile:
    """``profile`` on the real clock for ``epochs``: its pace scaled down, one partition.

    Its scenario is drawn as on the virtual clock (see :meth:`Profile.draw`), within the
    shortest training time: a partition if the profile has windows no request gets
    through, the revocation and the refusals at the same share of the training time. The
    profile's other windows are not replayed over HTTP: its ``http_faults`` stand in
    for them, injected by the server.
    """
    unreachable = any(rule.unreachable for rule in profile.windows)
    return attrs.evolve(
        profile,
        windows=(_PARTITION,) if unreachable else (),
        epoch_seconds=EPOCH_SECONDS,
        patience=PATIENCE + epochs * PATIENCE_PER_EPOCH,
    )


class _WorldClock(RealClock):
    """The monotonic clock, less the time the machine, not the session, took.

    Two kinds: a partition's stop and restart of the local hub, which run inside the
    session's next request (on the virtual clock they take no time), and a sleep's
    overrun, when a loaded machine wakes the session's thread later than it asked. Both
    grow with the machine's load; the session's schedule and the invariants (a
    heartbeat's lateness above all) count neither. Everything in a seed runs on one
    thread, so no overrun is counted twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped_at: float | None = None
        self._lost = 0.0

    def __call__(self) -> float:
        """Monotonic seconds, less the time the world spent on the hub."""
        with self._lock:
            now = time.monotonic() if self._stopped_at is None else self._stopped_at
            return now - self._lost

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; a wake-up later than that is not counted."""
        if seconds <= 0.0:
            return
        start = time.monotonic()
        time.sleep(seconds)
        overrun = time.monotonic() - start - seconds - _TIMER_SLACK
        if overrun > 0.0:
            with self._lock:
                self._lost += overrun

    def sleep_until(self, when: float) -> None:
        """Sleep until this clock reads ``when``."""
        self.sleep(when - self())

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stand still for the length of the ``with`` block."""
        with self._lock:
            self._stopped_at = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                assert self._stopped_at is not None
                self._lost += time.monotonic() - self._stopped_at
                self._stopped_at = None


class HttpWorld(World):
    """A :class:`World` whose hub is a local server on loopback, on the real clock.

    Args:
        seed: Seeds the trainer, the jitter, the scenario and the server's faults.
        profile: The profile; its ``http_faults`` are injected by the server, and its
            pace is scaled down (see :data:`EPOCH_SECONDS`, :data:`PATIENCE`).
        root: A fresh directory for the hub's data, the outboxes and the weight files.
        epochs: The epochs the trainer will run.
        protocol: ``hub`` or ``platform``: the dialect the session speaks.
        config: The core's limits and policies; by default :data:`CONFIG` (or
            :data:`PLATFORM_CONFIG`), scaled down to the real clock.
        bugs: Bugs to plant.
    """

    latency = 0.0
    restart_seconds = RESTART_SECONDS
    clock: _WorldClock

    def __init__(
        self,
        seed: int,
        profile: Profile,
        *,
        root: Path,
        epochs: int,
        protocol: ProtocolName = "hub",
        config: CoreConfig | None = None,
        bugs: Bugs = NO_BUGS,
    ) -> None:
        platform = protocol == "platform"
        # A real transport reads the weights from real files: the outboxes are files too.
        super().__init__(
            seed,
            http_profile(profile, epochs),
            root=root,
            epochs=epochs,
            config=config or (PLATFORM_CONFIG if platform else CONFIG),
            bugs=bugs,
            durability="files",
            protocol=protocol,
        )
        self.deadline = self.origin + HARD_TIMEOUT + epochs * EPOCH_ALLOWANCE

    # -- where the world runs -----------------------------------------------------------

    def _clock(self) -> _WorldClock:
        return _WorldClock()

    def _open_hub(self, root: Path, *, seed: int) -> None:
        """Start the local hub, with the session's key."""
        mix = self.profile.http_faults
        self.local = LocalHub(root / "hub", faults=None if mix.quiet else mix, seed=seed, hang=HANG)
        self.local.start()
        self.local.hub.ensure_key(self.key, label="simulated trainer")
        self.running = True
        self.revoked = False
        self._audits: list[Audit] = []

    def _heartbeat_slack(self) -> float:
        return READ_TIMEOUT + self.profile.http_faults.latency[1] + _JITTER

    def _connect(self, rng: random.Random) -> Handler:
        """HTTP to the local hub, with short timeouts: its ``send`` answers each request.

        The world's wrappers act in front of the socket, as they act in front of the
        in-memory hub; the world owns the HTTP transport and closes it at the end.
        """
        self._session: requests.Session | None = None
        if isinstance(self.checker, PlatformChecker):
            # On Platform the key must not go with a PUT: the checker sees every response.
            self._session = requests.Session()
            self._session.hooks["response"].append(self.checker.check_put)
        self.http = (PlatformTransport if self.protocol == "platform" else RequestsTransport)(
            self.key,
            api_root=self.local.url,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            progress=False,
            session=self._session,
        )
        return self.http.send

    def _schedule(self, handler: Handler, scenario: Scenario) -> Handler:
        """Bring the local hub in line with the scenario before each request."""
        return functools.partial(self._in_line, handler)

    #: True once the trainer started training (and the scenario's clock with it).
    _started = False

    def draw_scenario(self, *, start: float) -> Scenario:
        """The seed's scenario from ``start`` on; nothing happens until training starts.

        Opening a session over loopback takes a fair, varying share of a scaled-down
        run: the scenario is drawn when training starts (see :meth:`start`), as on the
        virtual clock, where opening is quick.
        """
        if not self._started:
            return Scenario(Schedule(self.profile.faults))
        return super().draw_scenario(start=start)

    def start(self) -> None:
        """The trainer starts training: the scenario's clock starts now."""
        if not self._started:
            self._started = True
            self.restart_scenario(start=self.clock())
        super().start()

    def restart_scenario(self, *, start: float) -> None:
        """Draw the seed's scenario from ``start`` on."""
        self.scenario = self.draw_scenario(start=start)

    # -- the scenario's levers ------------------------------------------------------

    def _in_line(self, handler: Handler, request: Request) -> Response:
        """Stop, restart or revoke as the scenario says for now, then hand ``request`` on."""
        scenario = self.scenario
        now = self.clock()
        down = scenario.schedule.at(now) is not None
        if down and self.running:
            with self.clock.stopped():
                self.stop_hub()
            self.checker.note("partition begins: the local hub is stopped")
        elif not down and not self.running:
            with self.clock.stopped():
                self.start_hub()
            self.checker.note("partition ends: the local hub is back")
        revoke_at = scenario.revoke_at
        if not self.revoked and revoke_at is not None and now >= revoke_at:
            self.revoke()
            self.checker.note("the API key is revoked")
        return handler(request)

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

    # -- what the hub holds ---------------------------------------------------------

    def hub_now(self) -> Hub:
        """The running hub (restarted if a partition was still on)."""
        if not self.running:
            self.start_hub()
        return self.local.hub

    def audits(self) -> list[Audit]:
        """The audit of every life of the hub: a restart starts a fresh one."""
        return [*self._audits, self.hub_now().audit()]

    def close(self) -> None:
        """Close the HTTP transport and stop the hub."""
        self.http.close()
        if self._session is not None:
            self._session.close()
        self.local.stop()


class RefusingHttpWorld(RefusingWorld, HttpWorld):
    """The refusing profile over HTTP: the seed's refusals answer in front of the socket.

    The hub's refusals (see :class:`~hubfsm.sim.refusing.RefusingHub`) are answered on
    the client's side of the HTTP transport, every other request reaches the local hub;
    after the fix, ``hubfsm sync`` delivers over HTTP what the outbox kept.
    """

    def restart_scenario(self, *, start: float) -> None:
        """Draw the seed's scenario from ``start`` on, refusals included."""
        super().restart_scenario(start=start)
        self.draw = self.refusing.draw = self.scenario.refusals or RefusalDraw()


def run_http_seed(
    seed: int,
    *,
    profile: str | Profile = "flaky",
    epochs: int = 8,
    keep_trace: bool = True,
    protocol: ProtocolName = "hub",
    bugs: Bugs = NO_BUGS,
) -> SimResult:
    """Run one seed's session over HTTP against a fresh local hub and check the invariants.

    Args:
        seed: Seeds the trainer, the jitter, the scenario and the server's faults.
        profile: A name from :data:`~hubfsm.sim.profiles.PROFILES`, or a :class:`Profile`.
        epochs: Epochs the trainer runs (each 0.05 to 0.15 s).
        keep_trace: Keep the trace of a run that broke nothing.
        protocol: ``hub`` or ``platform``: the dialect the session speaks.
        bugs: Bugs to plant (see :class:`~hubfsm.sim.bugs.Bugs`).
    """
    started = time.perf_counter()
    prof = named(profile) if isinstance(profile, str) else profile
    with tempfile.TemporaryDirectory(prefix="hubfsm-sim-", dir=scratch_root()) as tmp:
        world_class = HttpWorld if prof.refusals is None else RefusingHttpWorld
        world = world_class(seed, prof, root=Path(tmp), epochs=epochs, protocol=protocol, bugs=bugs)
        try:
            play(world, epochs=epochs, checkpoint_every=1, expect=prof.expect)
            return result_of(
                world, epochs=epochs, started=started, keep_trace=keep_trace, http=True
            )
        finally:
            world.close()
