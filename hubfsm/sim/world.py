"""Seeded simulation of whole training sessions: the world around real sessions.

One seed fixes everything: the trainer's timing and metrics, the fault windows, the
faults, the jitter. :class:`World` is a simulated trainer talking to real sessions, as
users compose them, against an in-memory hub on a virtual clock; :func:`play` drives it
through one run and :func:`run_seed` checks the invariants of the design after every
step and at the end. The same world runs over real HTTP against a local hub
(:mod:`hubfsm.sim.http_world` changes only where requests go and how time passes). The
profiles (what the hub and the trainer do) live in :mod:`hubfsm.sim.profiles`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs

from hubfsm.core import protocol
from hubfsm.core.changes import Saved
from hubfsm.core.config import CoreConfig, Limits
from hubfsm.core.dialect import PLATFORM, ProtocolName, parse_platform_identifier
from hubfsm.core.engine import Core
from hubfsm.core.events import EpochEnded, FinishPending, FinishRequested
from hubfsm.core.identifier import Identifier, parse_identifier
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_scan import events
from hubfsm.durable.layout import DATABASE
from hubfsm.durable.outbox import Outbox
from hubfsm.durable.recovery import JOURNAL
from hubfsm.durable.survey import OutboxInfo
from hubfsm.errors import HubfsmError
from hubfsm.hub.calls import Audit
from hubfsm.hub.domain import Hub
from hubfsm.hub.store_memory import MemoryStore
from hubfsm.runtime.clocks import Clock, VirtualClock
from hubfsm.runtime.driver import Driver
from hubfsm.runtime.factory import CoreFactory, Parts, build
from hubfsm.runtime.inline import SimRunner
from hubfsm.runtime.session import Session
from hubfsm.runtime.settings import Settings
from hubfsm.runtime.sync import sync
from hubfsm.sim.bugs import NO_BUGS, Bugs
from hubfsm.sim.crash import RESTART_SECONDS, Crash, DyingTransport
from hubfsm.sim.invariants import CRASH, FAILED_WRITE, Checker
from hubfsm.sim.machine import Machine, Terminated, poison_value
from hubfsm.sim.memdisk import MemoryDisk
from hubfsm.sim.platform_checks import PlatformChecker, platform_applied
from hubfsm.sim.profile_types import Expect, Profile, RefusalDraw, Scenario
from hubfsm.sim.profiles import named
from hubfsm.sim.refusing import STOP_ERRORS, RefusingHub
from hubfsm.sim.result import SimResult
from hubfsm.sim.scheduled import ScheduledFaults
from hubfsm.transport import FilePart, Transport
from transports.faults import FaultInjectingTransport
from transports.memory import InMemoryTransport

__all__ = ["EPOCH_ZERO", "TIMEOUT", "World", "run_seed"]

#: The metrics a simulated epoch reports, beside the loss.
METRIC_KEYS = tuple(f"metrics/m{i}" for i in range(8))

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


#: Where a simulated Platform trainer reports a new run (``project=local/sim``).
PLATFORM_PROJECT = "local/sim"


def sim_config(protocol: ProtocolName, config: CoreConfig | None) -> CoreConfig:
    """The core's config for a simulated session: the dialect's, idempotency keys seeded."""
    if protocol == "platform":
        base = config or CoreConfig(limits=PLATFORM.limits)
        return attrs.evolve(base, protocol="platform", nonce=protocol_nonce())
    return attrs.evolve(config or CoreConfig(), nonce=protocol_nonce())


def protocol_nonce() -> Callable[[random.Random], str]:
    """The nonce of a simulated world: it follows the seed."""
    return protocol.seeded_nonce


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
        self.transport = self._connect(random.Random(rng.getrandbits(64)))
        self.epochs = epochs
        self._scenario_seed = rng.getrandbits(64)
        self.scenario = self.draw_scenario(start=origin)
        outer = self._schedule(self.transport, self.scenario)
        self.link = outer
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
            self.link = DyingTransport(outer, self.deaths)
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
            self.link = self.machine.transport(self.link)
            if self.disk is not None:
                self.disk.machine = self.machine
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
        self.finishing = False
        self.restarts = 0
        #: True once ``hubfsm sync`` has run (the outboxes are files from then on).
        self.synced = False
        self.expected_sha: str | None = None
        #: What the trainer's ``finish`` (or, in the refusing world, ``close``) raised.
        self.raised: HubfsmError | None = None
        self.core = bugs.core_factory(config)  # until the first session is composed
        self.runner = SimRunner(Driver(self.core, outer, clock=self.clock, quiet=True))

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

    def _connect(self, rng: random.Random) -> Transport:
        """The transport to the hub, with the profile's faults injected on the way."""
        return FaultInjectingTransport(
            InMemoryTransport(
                self.hub, self.key, read_file=None if self.disk is None else self.disk.read
            ),
            rng,
            self.profile.faults,
            sleep=self.clock.sleep,
            timeout=TIMEOUT,
        )

    def draw_scenario(self, *, start: float) -> Scenario:
        """This seed's fault windows, revocation and refusals, from ``start`` on."""
        rng = random.Random(self._scenario_seed)
        return self.profile.draw(rng, start=start, epochs=self.epochs)

    def _schedule(self, transport: Transport, scenario: Scenario) -> Transport:
        """Apply the scenario as virtual time passes (see :class:`ScheduledFaults`)."""
        if not scenario.schedule.windows and scenario.revoke_at is None:
            return transport
        assert isinstance(transport, FaultInjectingTransport)
        return ScheduledFaults(
            transport,
            scenario,
            self.clock,
            revoke=lambda: self.hub.revoke_key(self.key),
            note=self.checker.note,
        )

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
        except HubfsmError:
            session = None
        if parts.core.model_id is not None:
            self.model_id = parts.core.model_id
        if machine is not None and not sync:
            machine.armed = True
        return session

    def _file(self, path: str, name: str, content: bytes) -> FilePart:
        """Write a weights file where the trainer keeps it."""
        target = f"{self.weights}{os.sep}{path.replace('/', '_')}"
        # A descriptor rather than pathlib: the trainer writes a file every epoch.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        return FilePart(name, target, len(content), hashlib.sha256(content).hexdigest())

    def _existing_model(self) -> str:
        """Create a model on the hub behind the session's back, and return its id."""
        if self.protocol == "platform":
            return platform_model(InMemoryTransport(self.hub_now(), self.key))
        created = InMemoryTransport(self.hub_now(), self.key).send(
            protocol.create_model(protocol.create_payload("yolov8n.yaml", {"data": "coco8"}))
        )
        return str(created.data["id"])

    def hub_now(self) -> Hub:
        """The hub as it is now."""
        return self.hub

    # -- the trainer ----------------------------------------------------------------

    def open(self, *, create: bool, timeout: float = 3600.0) -> None:
        """Open the session: the run's model if there is one, else a new or existing one."""
        if self.model_id is not None:
            identifier = self.model_id
        else:
            new = PLATFORM_PROJECT if self.protocol == "platform" else "yolov8n.pt"
            identifier = new if create else self._existing_model()
        self.session = self.compose(identifier, timeout=timeout)

    def start(self) -> None:
        """The trainer starts training."""
        assert self.session is not None
        self.session.start()

    def epoch(self, *, checkpoint: bool) -> None:
        """The trainer ends an epoch now: metrics, and maybe weights."""
        session = self.session
        assert session is not None
        epoch = len(self.logged)
        rng = self.rng
        draw = rng.random
        metrics = {key: round(draw(), 6) for key in METRIC_KEYS}
        metrics["train/loss"] = round(1.0 / (epoch + 1), 6)
        machine = self.machine
        if machine is not None and machine.plan.poison_epoch == epoch:
            self._log_poison(session, epoch, metrics, machine)
        else:
            session.log_metrics(metrics, epoch=epoch)
        self.logged.append(epoch)
        if machine is not None and not self._journaled():
            self.unjournaled.add(epoch)
        if checkpoint:
            content = f"weights of epoch {epoch} seed {self.seed}".encode()
            part = self._file(f"weights/epoch{epoch}.pt", "last.pt", content)
            session.save_checkpoint(part.path, epoch=epoch, is_best=rng.random() < 0.3)
        if self.quit_after is not None and len(self.logged) == self.quit_after:
            self.gave_up = True
            self.deaths.clear()  # this is the last death: the trainer does not come back
            self.checker.note("the process is killed between two calls; the trainer gives up")
            raise Crash(f"the process is killed after epoch {epoch}; the trainer gives up")

    def _log_poison(
        self, session: Session, epoch: int, metrics: dict[str, float], machine: Machine
    ) -> None:
        """Log an epoch with a value JSON cannot carry; if refused, log it again without."""
        kind = machine.plan.poison_kind
        machine.injected += 1
        self.checker.note(f"the trainer logs epoch {epoch} with a value JSON cannot carry ({kind})")
        try:
            session.log_metrics({**metrics, **poison_value(kind)}, epoch=epoch)
        except (TypeError, ValueError) as exc:
            # Refused at the call: the trainer is told, and logs what it can.
            self.checker.note(f"log_metrics refuses it: {type(exc).__name__}: {exc}")
            session.log_metrics(metrics, epoch=epoch)

    def finish(self, *, timeout: float = 7200.0) -> None:
        """The trainer ends training and waits for the final upload (or its timeout).

        What ``finish`` raises is kept in :attr:`raised`, for a world that checks it. With
        machine faults the process may be killed inside it, or terminated while it waits;
        either way the trainer does not come back, and ``hubfsm sync`` sends the rest.
        """
        session = self.session
        assert session is not None
        best = self._file("weights/best.pt", "best.pt", f"best of seed {self.seed}".encode())
        self.expected_sha = best.sha256
        last = max(len(self.logged) - 1, 0)
        self.finishing = True
        machine = self.machine
        term = machine is not None and machine.plan.finish_kill == "sigterm"
        if machine is not None:
            machine.arm_finish_kill()
        self.final_accepted = True
        self.final_unjournaled = machine is not None and not self._journaled()
        try:
            session.finish(
                best.path,
                epoch=last,
                map50_95=0.5,
                timeout=machine.plan.term_after if term and machine else timeout,
            )
        except HubfsmError as exc:
            self.raised = exc
        except OSError as exc:
            # The trainer is told the final weights are not kept, and stops there.
            self.final_accepted = False
            self.checker.note(f"finish() raises {type(exc).__name__}: {exc}; the trainer stops")
            self._give_up()
            raise Crash("the trainer stops: finish() raised") from None
        except Crash:
            if machine is not None and machine.killed:
                self._give_up()  # a kill inside finish(): the trainer does not come back
            raise
        if term and machine is not None and self.core.state != "done":
            machine.injected += 1
            self.checker.note("SIGTERM while finish() waits: the exit path flushes, then exits")
            try:
                session.close()  # the exit hook's flush, within the session's exit timeout
            except HubfsmError as exc:
                self.raised = exc
            self._give_up()
            raise Terminated("the process is terminated inside finish()")

    def _journaled(self) -> bool:
        """Whether the session's calls go to its journal (not when its blocks failed)."""
        parts = self.parts
        durability = None if parts is None else parts.durability
        journal = None if durability is None else durability.journal
        return journal is not None and journal.failed is None

    def _give_up(self) -> None:
        """The trainer does not come back: what is left is for ``hubfsm sync``."""
        self.gave_up = True
        self.deaths = set()

    # -- deaths and endings ---------------------------------------------------------

    def _die(self) -> None:
        """The process is gone: what it held is released as the kernel would, nothing more."""
        parts = self.parts
        machine = self.machine
        if machine is not None and machine.plan.poison_journal and not self.poisoned:
            self._leave_poison(machine)
        if parts is not None and parts.durability is not None:
            parts.durability.close(remove=False)
        if machine is not None:
            self._check_disk("dies")
        # Its memory is gone: what the journal holds is all that is left of its inbox.
        self.runner.inbox.clear()
        self.session = None
        self.checker.restarted()
        self.clock.sleep(self._restart_rng.uniform(*self.restart_seconds))

    def _leave_poison(self, machine: Machine) -> None:
        """The dying process leaves a poison record in its journal (an older version's)."""
        parts = self.parts
        journal = None if parts is None or parts.durability is None else parts.durability.journal
        if journal is None:
            return
        epoch = len(self.logged)
        kind = machine.plan.poison_kind
        journal.append(EpochEnded(epoch, {"train/loss": 1.0, **poison_value(kind)}))
        self.poisoned.add(epoch)
        machine.injected += 1
        self.checker.note(f"the journal keeps a record of epoch {epoch} JSON cannot carry ({kind})")

    def kept(self) -> tuple[set[int], bool]:
        """What the run's outbox and journal keep: the epochs, and whether a final.

        Read from the disk, as a new process would find it: the outbox's records and
        the journal's records newer than the outbox's.
        """
        held = self.outbox_now()
        if held is None:
            return set(), False
        saved, journal_seq = held
        directory = self.outboxes / str(self.model_id)
        epochs = {epoch for epoch, _ in saved.metrics}
        final = saved.final is not None
        for op in saved.ops:
            if op.channel == "metrics":
                epochs.update(op.payload)
            final = final or op.channel == "final"
        for record in saved.rejected:
            if record.channel == "metrics":
                epochs.update(record.payload)
        for _, event in events(directory / JOURNAL, after=journal_seq):
            if isinstance(event, EpochEnded):
                epochs.add(event.epoch)
            final = final or isinstance(event, FinishRequested | FinishPending)
        return epochs, final

    def outbox_now(self) -> tuple[Saved, int] | None:
        """What the run's outbox holds now, and the last journal record it took in.

        None when there is no outbox (nothing was left). The simulated disk is read
        until ``hubfsm sync`` wrote it out; from then on, and without one, the files.
        """
        if self.model_id is None:
            return None
        directory = self.outboxes / self.model_id
        if self.disk is not None and not self.synced:
            db = self.disk.databases.get(directory)
            return None if db is None else (db.load(), db.journal_seq)
        if not (directory / DATABASE).exists():
            return None
        outbox = Outbox(directory, self.model_id)
        try:
            return outbox.load(), outbox.journal_seq
        finally:
            outbox.close()

    def _check_disk(self, when: str) -> None:
        """What a process leaves on disk keeps every accepted event, and no temporary file."""
        left = [] if self.disk is None else self.disk.temporary_files()
        if left:
            name = os.path.basename(left[0])
            self.checker.violate(
                FAILED_WRITE, f"a failed snapshot left its temporary file {name} behind"
            )
        kept, final = self.kept()
        on_hub = self.on_hub()
        lost = sorted(set(self.logged) - on_hub - kept)
        # Calls taken without a journal were said to be at risk when it was given up.
        at_risk = [epoch for epoch in lost if epoch in self.unjournaled]
        if at_risk:
            self.reported_lost.update(at_risk)
            self.checker.note(f"lost as the session said they might be: epochs {at_risk[:10]}")
        lost = [epoch for epoch in lost if epoch not in self.unjournaled]
        if lost:
            self.checker.violate(
                FAILED_WRITE,
                f"the process {when}: epochs neither on the hub, in the outbox nor in the "
                f"journal: {lost[:10]}",
            )
        if self.final_unjournaled and not final and not self._final_on_hub():
            self.checker.note("the final weights are lost, as the session said they might be")
        elif self.final_accepted and not final and not self._final_on_hub():
            self.checker.violate(
                FAILED_WRITE,
                f"the process {when}: the final weights finish() took are neither on the hub, "
                "in the outbox nor in the journal",
            )

    def _final_on_hub(self) -> bool:
        _, uploads = self.applied()
        return any(kind == "final" and sha == self.expected_sha for kind, _, sha in uploads)

    def applied(self) -> tuple[dict[int, int], list[tuple[str, int, str]]]:
        """What the hub applied; an epoch a poison record and the trainer both sent, once.

        For Platform: what the hub holds (see :func:`platform_applied`).
        """
        model_id = self.core.model_id or ""
        if self.protocol == "platform":
            return platform_applied(self.hub_now(), model_id)
        metrics: Counter[int] = Counter()
        uploads = []
        for audit in self.audits():
            metrics.update({e: n for (m, e), n in audit.metrics_applied.items() if m == model_id})
            uploads += [
                (u.type, u.epoch, u.sha256) for u in audit.uploads if u.model_id == model_id
            ]
        for epoch in self.poisoned & metrics.keys():
            metrics[epoch] = 1
        return dict(metrics), uploads

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

    def check_end(self, *, expect: Expect | None = None) -> None:
        """The invariants at the end; with machine faults, also the final weights' fate."""
        self.check_hub(
            expect=expect,
            queued=self.runner.inbox.queued_epochs(),
            reported=self.reported_lost,
        )
        if self.machine is None or not self.final_accepted:
            return
        core = self.core
        if self._final_on_hub() or core.pending()["final"]:
            return
        if self.final_unjournaled:
            self.checker.note("the final weights are lost, as the session said they might be")
            return
        self.checker.violate(
            1, "the final weights finish() took are neither on the hub nor kept in the outbox"
        )

    def restart(self) -> None:
        """The process died and the trainer starts it again."""
        self.restarts += 1
        self._die()

    def wrap_up(self) -> None:
        """Close the trainer's session; if the trainer gave up, run ``hubfsm sync``."""
        if self.gave_up:
            self._die()
            if self.model_id is not None:
                self.sync()
        elif self.session is not None:
            self.session.close(timeout=0.0)

    def sync(self) -> None:
        """Run ``hubfsm sync`` over the run's outboxes, in a new simulated process."""
        out = io.StringIO()
        self.synced = True  # from now on the outboxes are files
        if self.machine is not None:
            self.machine.armed = False  # the space is freed by the time the user runs sync
        if self.disk is not None:
            self.disk.dump()

        def open_session(info: OutboxInfo) -> Session:
            session = self.compose(info.model_id, timeout=self.profile.patience, sync=True)
            if session is None:
                error = self.core.error
                raise error if error is not None else HubfsmError("the hub did not answer")
            return session

        sync(self.outboxes, out=out, timeout=self.profile.patience, open_session=open_session)


def _train(
    world: World,
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


def play(world: World, *, epochs: int, checkpoint_every: int, expect: Expect | None) -> None:
    """Run the trainer's side of a session in ``world``, then check how it ended.

    A process that dies (see :mod:`hubfsm.sim.crash`) is started again from what it
    left on disk, as often as the world's deaths say. An exception from the client is a
    failing run (a crash), not an abort, so a whole batch of seeds still reports it with
    its replay command.

    Args:
        world: The session and everything around it.
        epochs: Epochs the trainer runs, unless the session stops training first.
        checkpoint_every: The trainer offers weights every this many epochs.
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
                    epoch_seconds=world.profile.epoch_seconds,
                    patience=world.profile.patience,
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


def platform_model(transport: Transport) -> str:
    """Open a Platform run behind the session's back, as another trainer would; its id."""
    opened = transport.send(
        PLATFORM.training_started(
            Identifier(project=PLATFORM_PROJECT, run_name="earlier"),
            PLATFORM.train_data({"data": "coco8"}),
            key=None,
        )
    )
    return str(opened.body["modelId"])


def _world_class(profile: Profile) -> type[World]:
    """The world a profile runs in: a refusing hub's, or the plain one."""
    if profile.refusals is None:
        return World
    return RefusingWorld


def scratch_root() -> str | None:
    """Where runs keep their files: memory-backed ``/dev/shm`` where there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


class RefusingWorld(World):
    """A :class:`World` whose hub refuses as the seed draws.

    Takes the arguments of :class:`World`. Every request of the run's sessions (and of
    the sync after the fix) goes through a :class:`RefusingHub`.
    """

    def __init__(self, seed: int, profile: Profile, **kwargs: Any) -> None:
        super().__init__(seed, profile, **kwargs)
        self.draw = draw = self.scenario.refusals or RefusalDraw()
        self.refusing = RefusingHub(self.link, draw, self.clock, self.checker)
        self.link = self.refusing

    # -- the trainer hears of the refusal --------------------------------------------

    def wrap_up(self) -> None:
        """Close the trainer's session; a refusal ``finish`` did not raise is raised here."""
        if self.session is not None:
            try:
                self.session.close(timeout=0.0)
            except HubfsmError as exc:
                self.raised = exc

    # -- what the outbox holds ------------------------------------------------------

    def saved(self) -> Saved | None:
        """What the run's outbox holds now, or None when there is none (nothing left)."""
        held = self.outbox_now()
        return None if held is None else held[0]

    def held(self) -> set[int]:
        """The epochs the outbox holds: queued, in a kept operation, or rejected."""
        saved = self.saved()
        if saved is None:
            return set()
        epochs = {epoch for epoch, _ in saved.metrics}
        for op in saved.ops:
            if op.channel == "metrics":
                epochs.update(op.payload)
        for record in saved.rejected:
            epochs.update(record.epochs)
        return epochs

    def rejected_epochs(self) -> set[int]:
        """The epochs whose metrics the outbox keeps as rejected."""
        saved = self.saved()
        return set() if saved is None else {e for r in saved.rejected for e in r.epochs}

    # -- the end --------------------------------------------------------------------

    def check_end(self, *, expect: Expect | None = None) -> None:
        """Check the invariants against the outbox, how the session ended, then a sync."""
        checker = self.checker
        core = self.core
        self.check_hub(texts=[str(self.raised or "")], held=self.held())
        draw = self.draw
        wanted = STOP_ERRORS.get(draw.stop)
        # The Platform dialect retries a 409, as the Platform SDK does: it is an outage
        # that outlasts finish's patience, and everything stays kept for a sync.
        outage = self.protocol == "platform" and draw.stop == 409
        if outage:
            if core.state not in ("done", "resumable"):
                checker.violate(1, f"a 409 is retried on Platform; the session ended {core.state}")
        elif wanted is None and core.state != "done":
            checker.violate(1, f"nothing stopped the session, yet it ended {core.state}")
        elif wanted is not None and (core.state != "refused" or type(core.error) is not wanted):
            got = type(core.error).__name__ if core.error else "no error"
            checker.violate(
                6,
                f"a {draw.stop} must stop the session with {wanted.__name__}; "
                f"it ended {core.state} with {got}",
            )
        elif wanted is not None and expect is not None and type(self.raised) is not wanted:
            # The trainer must hear of it: finish (or close) raises, naming the answer.
            got = type(self.raised).__name__ if self.raised else "nothing"
            checker.violate(6, f"a {draw.stop} must be raised as {wanted.__name__}; got {got}")
        wrongly = self.rejected_epochs() - {draw.bad_epoch}
        if wrongly:
            checker.violate(1, f"epochs set aside though the hub takes them: {sorted(wrongly)}")
        fixable = (0, 401, 302, 409) if outage else (0, 401, 302)
        if expect is not None and draw.stop in fixable and checker.violations == []:
            self.sync_after_fix()

    def sync_after_fix(self) -> None:
        """The cause is fixed: ``hubfsm sync`` delivers all but the rejected records."""
        if self.model_id is None:
            return
        self.refusing.fixed = True
        checker = self.checker
        checker.restarted("the cause is fixed; hubfsm sync sends what the outbox holds")
        trainers = self.core
        try:
            self.sync()
        finally:
            # The run's result is how the trainer's session ended; the sync only checked it.
            self.core = trainers
        undelivered = set(self.logged) - self.on_hub() - self.rejected_epochs()
        if undelivered:
            checker.violate(1, f"after the fix, a sync left epochs {sorted(undelivered)[:10]}")
        if self.expected_sha is not None:
            finals = [sha for kind, _, sha in self.applied()[1] if kind == "final"]
            if finals[-1:] != [self.expected_sha]:
                checker.violate(3, "after the fix, a sync did not deliver the final weights")
        saved = self.saved()
        if saved is not None and saved.refusal is not None:
            checker.violate(6, "the outbox still says sending is stopped after a delivery")
