"""Seeded simulation of whole training sessions: the world around real sessions.

One seed fixes everything: the trainer's timing and metrics, the fault windows, the
faults, the jitter. :class:`World` holds real sessions, as users compose them, against
an in-memory hub on a virtual clock; the simulated trainer (:mod:`hubfsm.sim.trainer`)
calls them, :mod:`hubfsm.sim.play` drives one run through it, and the invariants of the
design are checked after every step and at the end (:mod:`hubfsm.sim.ends`). The
same world runs over real HTTP against a local hub (:mod:`hubfsm.sim.http_world` changes
only where requests go and how time passes). The profiles (what the hub and the trainer
do) live in :mod:`hubfsm.sim.profiles`.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Literal

import attrs

from hubfsm.core.config import CoreConfig, Limits, seeded_nonce
from hubfsm.core.identifier import parse_identifier, parse_platform_identifier
from hubfsm.core.platform import PLATFORM
from hubfsm.core.protocol import ProtocolName
from hubfsm.durable.journal import Journal
from hubfsm.errors import HubfsmError
from hubfsm.hub.calls import Audit
from hubfsm.hub.domain import Hub
from hubfsm.hub.store import MemoryStore
from hubfsm.runtime.driver import Clock, Driver
from hubfsm.runtime.factory import Parts, build
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.shells import SimRunner, VirtualClock
from hubfsm.sim.bugs import NO_BUGS, Bugs
from hubfsm.sim.ends import RESTART_SECONDS, check_final, check_hub, die, sync_outboxes
from hubfsm.sim.invariants import Checker
from hubfsm.sim.machine import Dying, Machine
from hubfsm.sim.memdisk import MemoryDisk
from hubfsm.sim.platform_checks import PlatformChecker
from hubfsm.sim.scenario import Expect, Profile, Scenario, ScheduledFaults
from hubfsm.transport import Handler
from transports.faults import Faults
from transports.memory import HandlerTransport

#: Virtual seconds each request takes on top of what the fault injector adds.
LATENCY = 0.05

#: Virtual seconds a request times out after, in the simulated transport.
TIMEOUT = 30.0

#: Where the virtual clock starts (any value; not zero, so no code relies on it).
EPOCH_ZERO = 1_000_000.0

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _token(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALNUM) for _ in range(n))


def api_key_for(protocol: ProtocolName, rng: random.Random) -> str:
    """A fresh API key in the dialect's form: ``ul_`` and 40 hex digits for Platform."""
    if protocol == "platform":
        return f"ul_{rng.getrandbits(160):040x}"
    return _token(rng, 42)


def sim_config(protocol: ProtocolName, config: CoreConfig | None) -> CoreConfig:
    """The core's config for a simulated session: the dialect's, idempotency keys seeded."""
    if protocol == "platform":
        base = config or CoreConfig(limits=PLATFORM.limits)
        return attrs.evolve(base, protocol="platform", nonce=seeded_nonce)
    return attrs.evolve(config or CoreConfig(), nonce=seeded_nonce)


class World:
    """One simulated training run: real sessions on a virtual clock, an in-memory hub, faults.

    The trainer's calls go to a real :class:`~hubfsm.runtime.session.Session` composed by
    the same factory users get, with the inline shell on the virtual clock: the same
    driver, journal, outbox, recovery and ``hubfsm sync`` code, on real files under
    ``root``. A profile with crashes kills the process at drawn requests (and, with
    ``abandon``, between two trainer calls, leaving the rest to ``hubfsm sync``).

    Args:
        seed: Fixes every random choice.
        profile: The faults, the windows and the trainer's pace.
        root: A scratch directory for the outbox and the trainer's weight files.
        epochs: The epochs the trainer will run (fault windows fall within them).
        config: The core's limits and policies.
        check_limits: The limits the checker holds the core to; by default the core's own.
        bugs: Bugs to plant.
        durability: Where outboxes keep their database and snapshots: ``memory`` (the
            outbox's code on an in-memory database, see :mod:`hubfsm.sim.memdisk`) or
            ``files`` (exactly as users run it). The journal is a real file either way.
        protocol: The dialect the sessions speak: ``hub`` (HUB v1) or ``platform``
            (the local hub's Platform API, with the dialect's own checks, see
            :mod:`hubfsm.sim.platform_checks`).
    """

    def __init__(
        self,
        seed: int,
        profile: Profile,
        *,
        root: Path,
        epochs: int = 50,
        config: CoreConfig | None = None,
        check_limits: Limits | None = None,
        bugs: Bugs = NO_BUGS,
        durability: Literal["memory", "files"] = "memory",
        protocol: ProtocolName = "hub",
    ) -> None:
        self.seed = seed
        self.protocol = protocol
        self.profile = profile
        self.rng = rng = random.Random(seed)
        self.clock = self._clock()
        self.origin = origin = self.clock()
        # Inside the simulated world even the idempotency keys follow the seed.
        self.config = config = sim_config(protocol, config)
        limits = check_limits or config.limits
        self.key = api_key_for(protocol, rng)
        self._open_hub(root, seed=rng.getrandbits(32))
        self.logged: list[int] = []
        self.checker = (PlatformChecker if protocol == "platform" else Checker)(
            self.clock,
            metrics=limits.metrics,
            checkpoint=limits.checkpoint,
            heartbeat=limits.heartbeat,
            heartbeat_slack=self._heartbeat_slack(),
            origin=origin,
            policies=config.policies,
            **({"logged": self.logged} if protocol == "platform" else {}),
        )
        self._life_rng = random.Random(rng.getrandbits(64))
        machine_rng = random.Random(rng.getrandbits(64)) if profile.machine else None
        self.disk = MemoryDisk(keep_temp=bugs.keep_temp) if durability == "memory" else None
        # One handler, composed here, answers every request of the run: the hub with the
        # seeded faults, the scenario, the deaths, the machine's kill, then the world's front.
        handler = self._connect(random.Random(rng.getrandbits(64)))
        self.epochs = epochs
        self._scenario_seed = rng.getrandbits(64)
        self.scenario = self.draw_scenario(start=origin)
        handler = self._schedule(handler, self.scenario)
        #: Request numbers at which the process dies (drawn by profiles with crashes).
        self.deaths: set[int] = set()
        self.quit_after: int | None = None
        if profile.crashes[1] > 0:
            crash_rng = random.Random(rng.getrandbits(64))
            lo, hi = profile.crashes
            # Requests run at about two per epoch: deaths fall in the first half or so.
            self.deaths = {
                crash_rng.randint(1, max(2, epochs)) for _ in range(crash_rng.randint(lo, hi))
            }
            handler = Dying(handler, self.deaths)
            if crash_rng.random() < profile.abandon:
                self.quit_after = crash_rng.randint(1, max(1, epochs - 1))
            self._restart_rng = crash_rng
        #: The machine's faults (disk, kills inside finish(), poison values), if any.
        self.machine: Machine | None = None
        if profile.machine is not None and machine_rng is not None:
            plan = profile.machine.draw(
                machine_rng,
                start=origin,
                horizon=max(1, epochs) * profile.epoch_seconds[0],
                epochs=epochs,
            )
            self.machine = Machine(
                profile.machine, plan, machine_rng, self.clock, self.checker.note
            )
            handler = self.machine.killing(handler)
            if self.disk is not None:
                self.disk.machine = self.machine
        #: The one transport every session of the run (and ``hubfsm sync``) sends with.
        self.link = HandlerTransport(self._front(handler))
        #: True once finish() has taken the final weights (it returned, or died after).
        self.final_accepted = False
        #: Epochs of poison records a dying process left in its journal.
        self.poisoned: set[int] = set()
        if isinstance(self.checker, PlatformChecker):
            # A poison record's epoch goes once from recovery and once from the trainer.
            self.checker.resent = self.poisoned
        #: Epochs accepted while the session had no journal (it said what is at risk).
        self.unjournaled: set[int] = set()
        #: Epochs lost at a death as the session had said they might be.
        self.reported_lost: set[int] = set()
        #: finish() took the final weights while the session had no journal.
        self.final_unjournaled = False
        self.bugs = bugs
        self.root = root
        self.weights = root / "weights"
        self.weights.mkdir(parents=True, exist_ok=True)
        self.outboxes = root / "outbox"
        self.session: Session | None = None
        self.parts: Parts | None = None
        self.model_id: str | None = None
        self.restarts = 0
        #: True once ``hubfsm sync`` has run (the outboxes are files from then on).
        self.synced = False
        self.expected_sha: str | None = None
        #: The sha256 of the bytes last.pt held when the trainer offered it, by epoch.
        self.checkpoints: dict[int, str] = {}
        #: What opening the trainer's session, its ``finish`` (or, in the refusing
        #: world, ``close``) raised.
        self.raised: HubfsmError | None = None
        self.core = bugs.core_factory(config)  # until the first session is composed
        self.runner = SimRunner(Driver(self.core, self.link, clock=self.clock, quiet=True))

    # -- where the world runs: overridden by a world over HTTP ------------------------

    #: Seconds each request takes on top of what the transport adds (on a virtual clock).
    latency = LATENCY
    #: The clock time after which a run stops with a crash (a bound on a seed's time).
    deadline = float("inf")
    #: Seconds a dead process takes to come back.
    restart_seconds = RESTART_SECONDS
    #: True once the trainer has finished (or died inside ``finish``).
    finishing = False
    #: True once the trainer was killed for good, leaving the rest to ``hubfsm sync``.
    gave_up = False

    def _clock(self) -> Clock:
        """The world's clock: virtual, so a seed's whole run takes milliseconds."""
        return VirtualClock(EPOCH_ZERO)

    def _open_hub(self, root: Path, *, seed: int) -> None:
        """Make the hub the session talks to: in memory, holding the session's key."""
        # A Platform hub answers absolute upload URLs: the client PUTs the bytes there.
        self.hub = Hub(
            MemoryStore(),
            self.clock,
            seed=seed,
            keys=[self.key],
            public_root="http://hub.invalid" if self.protocol == "platform" else "",
        )

    def _heartbeat_slack(self) -> float:
        """How late a heartbeat may be: a request's longest time, and a little."""
        return TIMEOUT + self.profile.max_latency + 0.1

    def _connect(self, rng: random.Random) -> Handler:
        """The hub's handler, with the profile's seeded faults injected in front of it."""
        disk = self.disk
        read_file = disk.read if disk is not None else lambda path: Path(path).read_bytes()
        self.faults = Faults(
            self.hub.handler(self.key, read_file=read_file),
            rng,
            self.profile.faults,
            sleep=self.clock.sleep,
            timeout=TIMEOUT,
        )
        return self.faults

    def draw_scenario(self, *, start: float) -> Scenario:
        """This seed's fault windows, revocation and refusals, from ``start`` on."""
        rng = random.Random(self._scenario_seed)
        return self.profile.draw(rng, start=start, epochs=self.epochs)

    def _schedule(self, handler: Handler, scenario: Scenario) -> Handler:
        """Apply the scenario as virtual time passes (see :class:`ScheduledFaults`)."""
        if not scenario.schedule.windows and scenario.revoke_at is None:
            return handler
        return ScheduledFaults(
            self.faults,
            scenario,
            self.clock,
            revoke=lambda: self.hub.revoke_key(self.key),
            note=self.checker.note,
        )

    def _front(self, handler: Handler) -> Handler:
        """What answers before ``handler``: nothing here (a refusing world's hub does)."""
        return handler

    # -- composing sessions ---------------------------------------------------------

    def compose(self, identifier: str, *, timeout: float, sync: bool = False) -> Session | None:
        """Compose a session as users get it (inline, on the virtual clock) and open it.

        Returns:
            The session, or None when opening failed (the core says how).
        """
        platform = self.protocol == "platform"
        settings = Settings(
            identifier=parse_platform_identifier(identifier)
            if platform
            else parse_identifier(identifier),
            train_args={"data": "coco8"},
            config=self.config,
            protocol=self.protocol,
            open_timeout=timeout,
            seed=self.seed if self.bugs.nonce_from_seed else None,
            outbox_dir=self.outboxes,
            exit_timeout=0.0,
            at_exit=False,
        )
        rng = None if self.bugs.nonce_from_seed else random.Random(self._life_rng.getrandbits(64))
        recover = (self.bugs.sync_recover if sync else None) or self.bugs.recover
        # hubfsm sync reads real outboxes: the simulated disk is written out for it.
        memory = self.disk is not None and not sync
        machine = self.machine
        open_journal = None
        if machine is not None and memory:
            open_journal = functools.partial(Journal, allocate=machine.allocate)
        parts = build(
            settings,
            transport=self.link,
            clock=self.clock,
            inline=True,
            observer=self.checker,
            on_change=self.checker.changed,
            rng=rng,
            core_factory=self.bugs.core_factory,
            driver_factory=self.bugs.driver_factory,
            recover=recover,
            open_outbox=self.disk.open_outbox if memory and self.disk is not None else None,
            open_journal=open_journal,
            latency=self.latency,
            quiet=True,
            deadline=self.deadline,
        )
        self.parts = parts
        self.core = parts.core
        assert isinstance(parts.shell, SimRunner)
        self.runner = parts.shell
        if machine is not None:
            machine.armed = False  # the disk fails while sessions train, not while they open
        try:
            session: Session | None = self.bugs.session_class.compose(parts)
        except HubfsmError as exc:
            # The trainer is told at the open: the hub refused it, or it never answered.
            self.raised = exc
            session = None
        if parts.core.model_id is not None:
            self.model_id = parts.core.model_id
        if machine is not None and not sync:
            machine.armed = True
        return session

    def hub_now(self) -> Hub:
        """The hub as it is now."""
        return self.hub

    # -- the trainer ----------------------------------------------------------------

    def start(self) -> None:
        """The trainer starts training."""
        assert self.session is not None
        self.session.start()

    def journaled(self) -> bool:
        """Whether the session's calls go to its journal (not when its blocks failed)."""
        parts = self.parts
        durability = None if parts is None else parts.durability
        journal = None if durability is None else durability.journal
        return journal is not None and journal.failed is None

    def give_up(self) -> None:
        """The trainer does not come back: what is left is for ``hubfsm sync``."""
        self.gave_up = True
        # Emptied, not replaced: the dying transport holds this set.
        self.deaths.clear()

    # -- the end ---------------------------------------------------------------------

    def audits(self) -> list[Audit]:
        """What the hub applied (one audit per life of the hub, if it was restarted)."""
        return [self.hub_now().audit()]

    def check_end(self, *, expect: Expect | None = None) -> None:
        """The invariants at the end; with machine faults, also the final weights' fate."""
        check_hub(
            self,
            expect=expect,
            queued=self.runner.inbox.queued_epochs(),
            reported=self.reported_lost,
        )
        check_final(self)

    def wrap_up(self) -> None:
        """Close the trainer's session; if the trainer gave up, run ``hubfsm sync``."""
        if self.gave_up:
            die(self)
            if self.model_id is not None:
                sync_outboxes(self)
        elif self.session is not None:
            self.session.close(timeout=0.0)
